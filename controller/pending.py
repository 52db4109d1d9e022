"""What the next passes must cover: hints merged per group, and whether a full pass is due.
Pure: no I/O, no clock of its own (every time comes with its hint).

Hints arrive while a pass runs; they are merged here and served by the next passes. A group
named by several hints is read once, with the time of its earliest hint (its event ->
applied latency counts from there) and the trigger that named it first; groups are served in
the order of their first hint, at most `limit` per pass, so a burst of events for many groups
(a host with many masters dies) is served in a few passes and none is lost. A hint that names
no group (a Sentinel (re)connected or lost, an HAProxy restarted, the lease expired or was
renewed, the resync period) asks for a full pass; any number of them make one.
Must not decide what a hint means: the loop does, and says so with `group` or `full`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.model import SentinelView


@dataclass
class _Group:
    since: float
    trigger: str
    carry: dict[str, SentinelView] = field(default_factory=dict)


@dataclass(frozen=True)
class Batch:
    """Groups for one targeted pass."""

    groups: dict[str, float]  # group -> its earliest hint (monotonic)
    trigger: str  # the trigger of the earliest hint
    # Late answers (Sentinel -> its view of these groups) that count until that Sentinel
    # answers the new pass: a slow Sentinel's news is not lost by asking it again.
    carry: dict[str, SentinelView]


class Pending:
    """Hints not served yet: groups for targeted passes, and at most one full pass."""

    def __init__(self) -> None:
        self._groups: dict[str, _Group] = {}  # insertion order: first hint first
        self._full: tuple[str, float] | None = None

    def group(self, name: str, trigger: str, received: float,
              carry: Mapping[str, SentinelView] | None = None) -> None:
        """A hint about group `name`."""
        g = self._groups.get(name)
        if g is None:
            g = self._groups[name] = _Group(received, trigger)
        elif received < g.since:
            g.since, g.trigger = received, trigger
        for sentinel, view in (carry or {}).items():
            g.carry[sentinel] = _merged(g.carry.get(sentinel), view)

    def full(self, trigger: str, received: float) -> None:
        """A hint that needs a full pass (merged with any full pass already due)."""
        if self._full is None or received < self._full[1]:
            self._full = (trigger, received)

    @property
    def has_groups(self) -> bool:
        return bool(self._groups)

    @property
    def has_full(self) -> bool:
        return self._full is not None

    def take_groups(self, limit: int) -> Batch | None:
        """The groups of the next targeted pass (the oldest `limit`), or None."""
        if not self._groups:
            return None
        names = list(self._groups)[:limit]
        taken = [(n, self._groups.pop(n)) for n in names]
        first = min(taken, key=lambda t: t[1].since)[1]
        carry: dict[str, SentinelView] = {}
        for _, g in taken:
            for sentinel, view in g.carry.items():
                carry[sentinel] = _merged(carry.get(sentinel), view)
        return Batch({n: g.since for n, g in taken}, first.trigger, carry)

    def take_full(self) -> tuple[str, float] | None:
        """(trigger, earliest hint) of the full pass due, or None; it is no longer due."""
        full, self._full = self._full, None
        return full


def _merged(a: SentinelView | None, b: SentinelView) -> SentinelView:
    """One Sentinel's views of different groups as one view (b wins where both say)."""
    if a is None or a.error is not None or b.error is not None:
        return b
    return dataclasses.replace(b, masters={**a.masters, **b.masters},
                               group_errors={**a.group_errors, **b.group_errors})
