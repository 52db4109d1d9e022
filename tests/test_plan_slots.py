"""controller.plan on slot-based backends: captured HAProxy states (the generated config) and
verdicts from captured Sentinel replies; the commands, their order and their notes."""

from __future__ import annotations

import dataclasses

from captured import GROUP, A, B, haproxy_state, node, views
from fakes import FakeHAProxy

from controller.decide import decide
from controller.membership import Membership
from controller.model import Address, Decision, HAProxyState
from controller.plan import Plan, plan, targets

W, R = f"{GROUP}_master", f"{GROUP}_replicas"


def verdict(state: str) -> Decision:
    v = views(state)
    return Membership().adjust(decide(GROUP, v, 2), v, frozenset(), 0.0)[0]


def planned(d: Decision, actual: HAProxyState) -> Plan:
    wanted, _ = targets([d], "{master}_master", "{master}_replicas", read_fallback=True)
    return plan(wanted, actual)


def texts(p: Plan) -> list[str]:
    return [c.text for c in p.commands]


def addr_cmd(backend: str, slot: str, a: Address) -> str:
    return f"set server {backend}/{slot} addr {a.host} port {a.port}"


def test_first_pass_fills_slots_then_readies_the_master_and_the_replica() -> None:
    """From the placeholders: each node gets a slot (its address), and only then are the
    master (write), the replica (read) and the fallback (backup) ready."""
    p = planned(verdict("steady"), haproxy_state("haproxy_slots_initial.txt"))
    cmds = texts(p)
    assert cmds == [  # slots in maint without sessions: only the address changes
        addr_cmd(W, "slot1", node(A)), addr_cmd(W, "slot2", node(B)),
        addr_cmd(R, "slot1", node(B)), addr_cmd(R, "slot2", node(A)),
        addr_cmd(R, "slot-fallback1", node(A)),
        f"set server {W}/slot1 state ready",
        f"set server {R}/slot1 state ready",
        f"set server {R}/slot-fallback1 state ready",
    ]
    assert all(c.expect == "addr" for c in p.commands if " addr " in c.text)
    assert p.notes == ()


def run_to_steady(h: FakeHAProxy, d: Decision) -> None:
    wanted, _ = targets([d], "{master}_master", "{master}_replicas", read_fallback=True)
    for _ in range(3):
        h.run(plan(wanted, h.state()).commands)
    assert plan(wanted, h.state()).commands == ()


def test_a_failover_with_slots_is_maint_then_ready_without_readdressing() -> None:
    """Both nodes already hold write slots: the old master goes maint (sessions shut) before
    the new one is ready, no write slot changes address; the read fallback moves to the other
    backup slot (the old one keeps its readers)."""
    h = FakeHAProxy("haproxy_slots_initial.txt")
    run_to_steady(h, verdict("steady"))
    cmds = texts(planned(verdict("switched"), h.state()))
    assert not any(" addr " in c and W in c for c in cmds)
    assert [c for c in cmds if " addr " in c] == [addr_cmd(R, "slot-fallback2", node(B))]
    assert f"set server {R}/slot-fallback1 state maint" in cmds
    assert cmds.index(f"set server {W}/slot1 state maint") < cmds.index(
        f"set server {W}/slot2 state ready")
    assert f"shutdown sessions server {W}/slot1" in cmds


def test_the_master_moving_to_a_new_address_never_readies_two_slots() -> None:
    """The master's name now resolves elsewhere: its old slot goes out (maint, sessions shut)
    before a free slot takes the new address and is made ready; one ready write slot at most."""
    h = FakeHAProxy("haproxy_slots_initial.txt")
    run_to_steady(h, verdict("steady"))
    moved = Address("127.0.0.77", node(A).port)
    d = verdict("steady")
    d = dataclasses.replace(d, master=moved, fallback=moved, nodes=(d.nodes - {node(A)}) | {moved})
    p = planned(d, h.state())
    cmds = texts(p)
    out = cmds.index(f"set server {W}/slot1 state maint")
    new = cmds.index(addr_cmd(W, "slot3", moved))
    ready = cmds.index(f"set server {W}/slot3 state ready")
    assert out < cmds.index(f"shutdown sessions server {W}/slot1") < new < ready
    h.run(p.commands)
    routable = [s.name for s in h.state().backends[W].values() if s.admin.value == "ready"]
    assert routable == ["slot3"]


def test_more_nodes_than_slots_is_one_note_naming_the_group_and_the_rest_served() -> None:
    """Five nodes, three slots: the master and the serving replica get theirs, a note with a
    count names the group and the nodes left out; nothing else changes."""
    d = verdict("steady")
    extra = {Address(f"127.0.0.{i}", node(A).port) for i in (50, 51, 52)}
    p = planned(dataclasses.replace(d, nodes=d.nodes | extra),
                haproxy_state("haproxy_slots_initial.txt"))
    notes = [n for n in p.notes if n.event == "slots_exhausted"]
    assert [(n.backend, n.count) for n in notes] == [(W, 2), (R, 2)]
    assert all(GROUP in n.detail and "slots_per_backend" in n.detail for n in notes)
    assert f"set server {W}/slot1 state ready" in texts(p)
    assert f"set server {R}/slot1 state ready" in texts(p)


def test_fixed_servers_need_no_slot() -> None:
    """A node a fixed server already stands for gets no slot (mixed backends)."""
    h = FakeHAProxy("haproxy_slots_initial.txt")
    st = h.state()
    fixed = dataclasses.replace(st.backends[W]["slot3"], name="redis1a", addr=node(A).host,
                                port=node(A).port)
    st.backends[W] = {"redis1a": fixed, **{k: v for k, v in st.backends[W].items()
                                           if k != "slot3"}}
    cmds = texts(planned(verdict("steady"), st))
    assert addr_cmd(W, "slot1", node(B)) in cmds
    assert not any(addr_cmd(W, s, node(A)) in cmds for s in ("slot1", "slot2"))
    assert f"set server {W}/redis1a state ready" in cmds


def test_a_missing_backend_names_the_command_that_prints_its_lines() -> None:
    """Sentinel monitors a group HAProxy has no backend for: the note says what to run."""
    st = haproxy_state("haproxy_slots_initial.txt")
    p = planned(dataclasses.replace(verdict("steady"), name="redis9"), st)
    missing = [n for n in p.notes if n.event == "backend_missing"]
    assert {n.backend for n in missing} == {"redis9_master", "redis9_replicas"}
    assert all("sentinel-haproxy config --master redis9 --sections-only" in n.detail
               for n in missing)
