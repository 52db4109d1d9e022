"""What the loop and the HAProxy workers did, for metrics and health.

Written by the loop thread and by each HAProxy worker (per-HAProxy keys only by that HAProxy's
worker); sums shared by several threads change under `lock`. Read by metrics and health.
Must not hold anything but numbers and small per-HAProxy/per-group maps.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Counters:
    passes: int = 0
    commands_applied: int = 0
    commands_failed: int = 0
    failovers_seen: int = 0
    passes_with_changes: int = 0  # syncs that applied at least one command
    hand_edits_undone: int = 0  # of those: HAProxy changed while Sentinel did not
    last_event_to_applied_ms: float | None = None
    last_pass_ok: float = 0.0  # monotonic time of the last pass that read enough Sentinels
    haproxy_up: dict[str, bool] = field(default_factory=dict)
    # Per HAProxy, commands still needed after the last sync; None: unknown (read-back failed).
    drift: dict[str, int | None] = field(default_factory=dict)
    undecided: set[str] = field(default_factory=set)
    undecided_since: dict[str, float] = field(default_factory=dict)  # group -> monotonic
    # HAProxy -> monotonic time since which its syncs refuse commands or leave drift
    failing_since: dict[str, float] = field(default_factory=dict)
    # (HAProxy, group) -> the servers its write backend routes to (the fleet view in metrics)
    write_servers: dict[tuple[str, str], str] = field(default_factory=dict)
    # (HAProxy, group, backend) -> nodes that have no server slot (plan note slots_exhausted)
    nodes_without_slot: dict[tuple[str, str, str], int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **amounts: int) -> None:
        """Add to counters shared by several threads (commands_applied=3, ...)."""
        with self.lock:
            for name, n in amounts.items():
                setattr(self, name, getattr(self, name) + n)
