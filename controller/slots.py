"""Server slots: which `server-template` slot of a backend stands for which Redis node. Pure.

A slot-based backend declares `server-template slot 1-N 127.0.0.1:1 disabled ...` (an IP
placeholder: HAProxy 2.6 cannot fill an `init-addr none` slot at runtime, facts "Topology
changes"); the read backend also `server-template slot-fallback 1-M ... backup`, the backup
slots for its read fallback (the master). A server is a slot when its name is
`<prefix><n>` or `<prefix>-fallback<n>`; normal and backup slots are two separate sets.

Assignment is derived from HAProxy's own state, never from a file of ours: a slot whose
address and port are a node's identity (controller.topology) stands for that node, so it is
stable across passes, controller restarts and hand-offs between controllers. Nodes without a
slot take free ones, in priority order (the nodes that must be ready first: the master in a
write backend, serving replicas in a read backend), lowest free slot first, preferring slots
already in maint. A slot gets another address only when it is in maint and its sessions are
shut (the plan sends `maint`, `shutdown sessions`, then `set server B/S addr IP port P`), and
never while HAProxy reports sessions on it: a slot still holding sessions of a node that is
gone is drained first (maint, sessions shut) and re-used on a later pass. When a node that must
be ready has no free slot, a slot holding a node that need not be ready (and no session) is
taken. Nodes that still get no slot are reported (`slots_exhausted`); the others are served.
Two slots with the same address: the lowest one stands for the node, the other is free.

Fixed servers (any other name) are matched to nodes by address, as before; a node that has a
fixed server in the backend needs no slot.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from controller.model import Address, AdminState, ServerState

PLACEHOLDER = Address("127.0.0.1", 1)  # the address slots are declared with


@functools.lru_cache(maxsize=16)
def slot_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(prefix)}(?:-fallback)?(\d+)")


def is_slot(name: str, prefix: str) -> bool:
    return slot_pattern(prefix).fullmatch(name) is not None


def _number(name: str, prefix: str) -> int:
    m = slot_pattern(prefix).fullmatch(name)
    return int(m.group(1)) if m else 0


def server_addr(srv: ServerState) -> Address | None:
    """The IP address a server has now, None when unresolved (`-`)."""
    return None if srv.addr in ("-", "") else Address(srv.addr, srv.port)


@dataclass(frozen=True)
class Move:
    """A slot that gets a node's address (after maint and a session shutdown)."""

    slot: ServerState
    node: Address


@dataclass(frozen=True)
class SlotPlan:
    """The outcome for one set of slots of one backend."""

    holds: Mapping[str, Address] = field(default_factory=dict)  # slot -> node after the moves
    moves: tuple[Move, ...] = ()
    drain: tuple[ServerState, ...] = ()  # slots to empty of sessions, re-used later
    left_out: tuple[Address, ...] = ()  # nodes that get no slot (not enough slots)
    no_ip: tuple[Address, ...] = ()  # nodes without an IP address (name not resolved)


def assign(
    slots: Sequence[ServerState],
    wanted: Sequence[Address],
    hot: Iterable[Address],
    prefix: str = "slot",
) -> SlotPlan:
    """Give each node of `wanted` (in priority order) a slot of `slots`.

    `hot` are the nodes that must be ready in this backend: they may take the slot of a node
    that need not be (never one with sessions).
    """
    hot = set(hot)
    ordered = sorted(slots, key=lambda s: _number(s.name, prefix))
    no_ip = tuple(n for n in wanted if n.ip is None)
    nodes = [n for n in dict.fromkeys(wanted) if n.ip is not None]
    holds: dict[str, Address] = {}
    taken: set[Address] = set()
    for s in ordered:  # the lowest slot with a node's address stands for it
        a = server_addr(s)
        if a is not None and a in nodes and a not in taken:
            holds[s.name] = a
            taken.add(a)
    free = [s for s in ordered if s.name not in holds]
    # Session-free slots are usable now, maint ones first (they serve nothing).
    usable = sorted((s for s in free if s.sessions == 0),
                    key=lambda s: (s.admin is not AdminState.MAINT, _number(s.name, prefix)))
    busy = [s for s in free if s.sessions > 0]
    moves: list[Move] = []
    drain: list[ServerState] = []
    left_out: list[Address] = []
    rank = {n: i for i, n in enumerate(nodes)}
    for n in nodes:
        if n in taken:
            continue
        slot: ServerState | None = usable.pop(0) if usable else None
        if slot is None and n in hot:
            victims = [s for s in ordered if s.name in holds and holds[s.name] not in hot
                       and s.sessions == 0 and not any(m.slot.name == s.name for m in moves)]
            if victims:
                slot = max(victims, key=lambda s: rank[holds[s.name]])
                evicted = holds.pop(slot.name)
                taken.discard(evicted)
                if rank[evicted] < rank[n]:  # already passed: report it here
                    left_out.append(evicted)
        if slot is None:
            left_out.append(n)
            continue
        holds[slot.name] = n
        taken.add(n)
        if server_addr(slot) != n:
            moves.append(Move(slot, n))
    if left_out:
        drain = busy[: len(left_out)]
    return SlotPlan(holds, tuple(moves), tuple(drain), tuple(left_out), no_ip)
