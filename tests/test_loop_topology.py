"""Whole reconcile passes on a slot-based HAProxy (the generated config, captured) with the
roster: hostnames resolved, a master whose name moves to a new address, a replica every
Sentinel forgot, and the extra passes after `+slave`. The loop's Protocols are served by
tests/fakes.py; names are resolved by a function, not DNS."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

import pytest
from captured import GROUP, A, B, node, views, with_master
from fakes import FakeHAProxy, FakeSentinels
from structlog.testing import capture_logs

from controller.loop import Controller
from controller.model import Address, SentinelView
from controller.redis_nodes import NodeError, Role
from controller.resolver import Resolver
from controller.roster import Roster
from controller.sentinel import Hint
from controller.sentinel_parse import parse_event
from controller.settings import Settings
from controller.topology import canonical_views
from lab.wait import wait_until

SENTINELS = tuple(v.sentinel for v in views("steady"))
W, R = f"{GROUP}_master", f"{GROUP}_replicas"
NA = Address("node-a.redis", node(A).port)


class Names:
    """A resolver stand-in: a dict you can change between passes."""

    def __init__(self) -> None:
        self.answers = {"node-a.redis": [node(A).host]}

    def __call__(self, name: str) -> list[str]:
        if name not in self.answers:
            raise OSError(-2, "Name or service not known")
        return self.answers[name]


def ready_slots(h: FakeHAProxy, backend: str) -> dict[str, Address]:
    return {s.name: Address(s.addr, s.port) for s in h.state().backends[backend].values()
            if s.admin.value == "ready"}


@pytest.fixture
def names() -> Names:
    return Names()


def make(names: Names, sentinels: FakeSentinels, haproxy: FakeHAProxy) -> Controller:
    roster = Roster(Resolver(cache_s=0.0, lookup=names), recheck_interval_s=0.01,
                    recheck_window_s=0.05, resolve_interval_s=0.0)
    settings = Settings(sentinels=SENTINELS, masters=(GROUP,))
    return Controller(settings, sentinels, [haproxy], roster=roster)


def named_views(state: str) -> list[SentinelView]:
    """The captured views as `announce-hostnames yes` shows them: the master by name."""
    return canonical_views(views(state), {node(A): NA})


def test_slots_are_filled_from_sentinel_and_verified() -> None:
    """From the generated config's placeholders, one pass gives both nodes slots and sets the
    master, the replica and the read fallback ready; the read-back finds no drift."""
    h = FakeHAProxy("haproxy_slots_initial.txt")
    ctl = make(Names(), FakeSentinels("steady"), h)
    result = ctl.reconcile("start")
    assert result.haproxies[0].drift_after == 0
    assert ready_slots(h, W) == {"slot1": node(A)}
    assert ready_slots(h, R) == {"slot1": node(B), "slot-fallback1": node(A)}
    assert ctl.reconcile("resync").haproxies[0].results == ()


def test_a_master_named_by_hostname_is_routed_to_its_address(names: Names) -> None:
    """Sentinel names the master `node-a.redis`, replicas by IP: it is the same node."""
    s = FakeSentinels("steady")
    s.views = named_views("steady")
    h = FakeHAProxy("haproxy_slots_initial.txt")
    ctl = make(names, s, h)
    d = ctl.reconcile("start").decisions[0]
    assert d.master == node(A) and d.replicas == {node(B)}
    assert ready_slots(h, W) == {"slot1": node(A)}


def test_the_master_name_moving_moves_the_write_slot_once(names: Names) -> None:
    """The master's pod restarts elsewhere (same name, new IP): the old slot goes out before a
    new one is ready; at no point two write slots are ready."""
    s = FakeSentinels("steady")
    s.views = named_views("steady")
    h = FakeHAProxy("haproxy_slots_initial.txt")
    ctl = make(names, s, h)
    ctl.reconcile("start")
    names.answers["node-a.redis"] = ["127.0.0.77"]
    assert ctl.roster is not None and ctl.roster.due() == "address_changed"
    ctl.reconcile("address_changed")
    moved = Address("127.0.0.77", node(A).port)
    assert list(ready_slots(h, W).values()) == [moved]
    assert h.applied.index(f"set server {W}/slot1 state maint") < h.applied.index(
        f"set server {W}/slot3 state ready")


def test_an_unresolvable_master_name_refuses_writes_and_the_rest_proceeds(
    names: Names,
) -> None:
    """The master's name stops resolving: its slot leaves the write backend (no stale IP), the
    replica still serves reads."""
    s = FakeSentinels("steady")
    s.views = named_views("steady")
    h = FakeHAProxy("haproxy_slots_initial.txt")
    ctl = make(names, s, h)
    ctl.reconcile("start")
    del names.answers["node-a.redis"]
    ctl.reconcile("resync")
    assert ready_slots(h, W) == {}
    assert ready_slots(h, R) == {"slot1": node(B)}


def test_a_reset_keeps_the_serving_replica(names: Names) -> None:
    """Every Sentinel forgets the replica (SENTINEL RESET): it keeps its slot and serves."""
    s = FakeSentinels("steady")
    h = FakeHAProxy("haproxy_slots_initial.txt")
    ctl = make(names, s, h)
    ctl.reconcile("start")
    s.views = [with_master(v, replicas=()) for v in views("steady")]
    d = ctl.reconcile("+reset-master").decisions[0]
    assert d.replicas == {node(B)}
    assert ready_slots(h, R) == {"slot1": node(B), "slot-fallback1": node(A)}


def test_plus_slave_schedules_quick_rechecks() -> None:
    """`+slave` opens a short window of extra passes; other events do not."""
    roster = Roster(Resolver(), recheck_interval_s=0.01, recheck_window_s=0.05)
    ev = parse_event("+slave", f"slave 127.0.0.9:1 127.0.0.9 1 @ {GROUP} 127.0.0.2 1")
    roster.hint(Hint("s", "event", time.monotonic(), parse_event("+sdown", "master g 1.2.3.4 1")))
    assert roster.next_due() == float("inf")
    roster.hint(Hint("s", "event", time.monotonic(), ev))
    assert roster.next_due() < time.monotonic() + 0.02
    seen: list[str] = []

    def two_rechecks() -> bool:
        if t := roster.due():
            seen.append(t)
        return len(seen) == 2

    wait_until(two_rechecks, 5, "two re-check passes due", 0.005)
    assert seen == ["recheck", "recheck"]
    assert roster.recheck_groups == {GROUP}  # the loop re-checks that group only


class Linked:
    """A RoleAsker stand-in: the master each node says it is linked to (None: LOADING,
    resyncing), as ROLE would; `check` runs on every ask."""

    def __init__(self) -> None:
        self.says: dict[Address, Address | None] = {}
        self.check: Callable[[], None] = lambda: None
        self.sweeps: list[list[Address]] = []  # the nodes of each ROLE sweep

    def roles(self, addrs: Collection[Address]) -> dict[Address, Role | NodeError]:
        self.check()
        self.sweeps.append(list(addrs))
        return {a: Role("slave", self.says.get(a)) for a in addrs}


def test_a_replica_back_but_not_linked_yet_is_held_out_of_reads_and_rechecked(
    names: Names,
) -> None:
    """A replica that went down and that the Sentinels see healthy again but that does not
    say it is linked to the master (restarted, still loading or resyncing) gets no read slot:
    it is asked only once the pass has handed its verdict to the HAProxy worker (a node never
    delays a hand-over), one `replica_not_ready` line, re-check passes of its group scheduled
    (nothing else would pass it again when it is done), the master serves reads as the
    fallback; once it says it is linked it serves."""
    s = FakeSentinels("steady")
    h = FakeHAProxy("haproxy_slots_initial.txt")
    probe = Linked()
    roster = Roster(Resolver(cache_s=0.0, lookup=names), probe, recheck_interval_s=0.01,
                    recheck_window_s=0.05, resolve_interval_s=0.0)
    ctl = Controller(Settings(sentinels=SENTINELS, masters=(GROUP,)), s, [h], roster=roster)

    pending_when_asked: list[int] = []
    probe.check = lambda: pending_when_asked.append(ctl.workers[0].pending())
    ctl.reconcile("start")
    assert set(ready_slots(h, R).values()) == {node(B), node(A)}  # never seen: not asked
    assert not pending_when_asked
    s.show("replica_dead")
    ctl.reconcile("+sdown", [GROUP])
    s.show("steady")
    with capture_logs() as logs:
        ctl.reconcile("-sdown", [GROUP])
        ctl.reconcile("recheck", [GROUP])
    assert set(ready_slots(h, R).values()) == {node(A)}  # the fallback
    assert pending_when_asked and set(pending_when_asked) == {1}, "asked before the hand-over"
    assert [e["replica"] for e in logs if e["event"] == "replica_not_ready"] == [str(node(B))]
    assert roster.recheck_groups == {GROUP}
    assert roster.next_due() < time.monotonic() + 0.05
    probe.says[node(B)] = node(A)

    def serves() -> bool:
        ctl.reconcile("recheck", [GROUP])
        return node(B) in ready_slots(h, R).values()

    wait_until(serves, 5, "the linked replica to serve reads", 0.02)
    assert set(ready_slots(h, R).values()) == {node(B), node(A)}


def test_held_replicas_of_many_groups_are_asked_in_one_sweep(names: Names) -> None:
    """Replicas held back in several groups (a host with many masters came back) are asked
    ROLE in one sweep after the hand-over, not one by one (a slow node would cost one
    timeout each); each answer counts for its own group's next pass, and every group whose
    replica answered is passed again."""
    probe = Linked()
    roster = Roster(Resolver(cache_s=0.0, lookup=names), probe)
    held = {f"g{i}": (Address(f"127.0.1.{i}", 6379), Address(f"127.0.2.{i}", 6379))
            for i in range(1, 4)}
    for group, (replica, master) in held.items():
        assert roster._said_linked(group, replica, master) is False  # held: asked after
    probe.says = {held["g1"][0]: held["g1"][1], held["g3"][0]: Address("127.0.9.9", 6379)}
    roster.ask_held()
    assert probe.sweeps == [[replica for replica, _ in held.values()]]
    said = {g: roster._said_linked(g, r, m) for g, (r, m) in held.items()}
    assert said == {"g1": True, "g2": False, "g3": False}
    assert probe.sweeps[1:] == []  # answers are used, not asked again within the pass
    assert roster.recheck_groups == {"g1"}


def test_a_pass_over_other_groups_does_not_forget_a_named_node(names: Names) -> None:
    """A targeted pass reads some groups only: a named node of a group it did not read is not
    forgotten, so the next read of its own group does not report its address again."""
    import dataclasses

    roster = Roster(Resolver(cache_s=0.0, lookup=names))
    other = [dataclasses.replace(v, masters={"redis9": v.masters[GROUP]}) for v in views("steady")]
    with capture_logs() as logs:
        roster.normalize(named_views("steady"))
        roster.normalize(other)
        roster.normalize(named_views("steady"))
    assert [e["event"] for e in logs] == ["node_address"]


def test_a_group_haproxy_has_no_backend_for_is_said_once_with_the_command() -> None:
    """Sentinel monitors a group HAProxy has no backend for: one error line per backend, with
    the command that prints the lines to add, not one per pass."""
    import dataclasses

    s = FakeSentinels("steady")
    s.views = [dataclasses.replace(v, masters={"redis9": v.masters[GROUP]}) for v in s.views]
    s.names = ["redis9"]
    ctl = Controller(Settings(sentinels=SENTINELS), s, [FakeHAProxy("haproxy_slots_initial.txt")],
                     roster=Roster(Resolver(lookup=Names())))
    with capture_logs() as logs:
        for _ in range(3):
            ctl.reconcile("resync")
    missing = [e for e in logs if e["event"] == "backend_missing"]
    assert [e["backend"] for e in missing] == ["redis9_master", "redis9_replicas"]
    assert all("sentinel-haproxy config --master redis9 --sections-only" in e["detail"]
               for e in missing)
