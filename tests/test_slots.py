"""controller.slots: which slot stands for which node, derived from HAProxy's captured state.

`haproxy_slots_initial.txt` is a real HAProxy on the generated config (every slot at the
placeholder, disabled); `haproxy_slots_filled.txt` the same after slots were filled the way the
controller leaves them, with a reader's session open on `redis1_replicas/slot1`.
"""

from __future__ import annotations

import dataclasses

from captured import haproxy_state

from controller.model import Address, AdminState, ServerState
from controller.slots import PLACEHOLDER, assign, is_slot, server_addr

INITIAL = haproxy_state("haproxy_slots_initial.txt")
FILLED = haproxy_state("haproxy_slots_filled.txt")
PORT = FILLED.backends["redis1_master"]["slot1"].port
N1, N2 = Address("127.0.0.2", PORT), Address("127.0.0.3", PORT)
N3, N4 = Address("127.0.0.4", PORT), Address("127.0.0.5", PORT)
V6 = Address("::1", PORT)


def normal(state: object, backend: str) -> list[ServerState]:
    servers = state.backends[backend]  # type: ignore[attr-defined]
    return [s for s in servers.values() if not s.backup and is_slot(s.name, "slot")]


def test_slot_names_and_the_captured_placeholder() -> None:
    """Template slots and backup slots are slots; any other name is a fixed server."""
    assert is_slot("slot1", "slot") and is_slot("slot-fallback2", "slot")
    assert not is_slot("redis1a", "slot") and not is_slot("slot", "slot")
    assert not is_slot("slotx1", "slot")
    srv = INITIAL.backends["redis1_master"]["slot3"]
    assert server_addr(srv) == PLACEHOLDER and srv.admin is AdminState.MAINT


def test_first_assignment_fills_the_lowest_slots_in_priority_order() -> None:
    """From the placeholders: the master takes slot1, the others follow in order."""
    sp = assign(normal(INITIAL, "redis1_master"), [N1, N2], {N1})
    assert dict(sp.holds) == {"slot1": N1, "slot2": N2}
    assert [(m.slot.name, m.node) for m in sp.moves] == [("slot1", N1), ("slot2", N2)]
    assert sp.left_out == () and sp.drain == ()


def test_assignment_is_read_back_from_haproxy_and_stable() -> None:
    """Slots that already hold a node keep it, whatever the order of `wanted`: no move."""
    sp = assign(normal(FILLED, "redis1_master"), [N2, V6, N1], {N2})
    assert dict(sp.holds) == {"slot1": N1, "slot2": N2, "slot3": V6}
    assert sp.moves == ()


def test_a_new_node_takes_a_free_slot_in_maint() -> None:
    """A node that has no slot takes the lowest free one; nodes gone free theirs."""
    sp = assign(normal(FILLED, "redis1_master"), [N1, N3], {N1})
    assert sp.holds["slot1"] == N1
    assert [(m.slot.name, m.node) for m in sp.moves] == [("slot2", N3)]


def test_a_slot_with_sessions_is_never_readdressed() -> None:
    """The read slot with an open reader session is not taken; when nothing else is free the
    node is left out and that slot is drained for a later pass."""
    slots = normal(FILLED, "redis1_replicas")  # slot1=N2 (1 session), slot2=N1, slot3 free
    sp = assign(slots, [N3, N4], {N3, N4})
    assert [(m.slot.name, m.node) for m in sp.moves] == [("slot2", N3), ("slot3", N4)]
    sp = assign(slots[:1] + slots[2:], [N3, N4], {N3, N4})  # slot1 (busy) and slot3 only
    assert [(m.slot.name, m.node) for m in sp.moves] == [("slot3", N3)]
    assert sp.left_out == (N4,)
    assert [s.name for s in sp.drain] == ["slot1"]


def test_a_node_that_must_be_ready_takes_the_slot_of_one_that_need_not() -> None:
    """Out of slots, a new master evicts the lowest-priority node that is not wanted ready
    (never one with sessions); the evicted node is reported as left out."""
    slots = normal(FILLED, "redis1_master")  # N1, N2, ::1: all held
    sp = assign(slots, [N4, N1, N2, V6], {N4})
    assert sp.holds.get("slot3") == N4 and [m.node for m in sp.moves] == [N4]
    assert sp.left_out == (V6,)


def test_more_nodes_than_slots_serves_those_that_fit() -> None:
    """Nodes beyond the slot count are left out, in priority order; the first ones fit."""
    sp = assign(normal(INITIAL, "redis1_master"), [N1, N2, N3, N4, V6], {N1})
    assert list(sp.holds.values()) == [N1, N2, N3]
    assert sp.left_out == (N4, V6)


def test_duplicate_addresses_keep_the_lowest_slot() -> None:
    """Two slots with one node's address: the lower one stands for it, the other is free."""
    slots = normal(FILLED, "redis1_master")
    dup = [slots[0], dataclasses.replace(slots[1], addr=N1.host), slots[2]]
    sp = assign(dup, [N1], {N1})
    assert dict(sp.holds) == {"slot1": N1} and sp.moves == ()


def test_nodes_without_an_ip_get_no_slot() -> None:
    """A hostname that did not resolve is reported, never pushed to HAProxy."""
    sp = assign(normal(INITIAL, "redis1_master"), [Address("node-a.redis", PORT), N1], {N1})
    assert sp.no_ip == (Address("node-a.redis", PORT),)
    assert dict(sp.holds) == {"slot1": N1}
