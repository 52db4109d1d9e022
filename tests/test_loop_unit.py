"""controller.loop.Controller through whole passes, without processes: the loop's Protocols
are served by tests/fakes.py (captured Sentinel views, an in-memory HAProxy that applies the
commands it gets), so a failover, an HAProxy restart, an undecided group and a hand edit run
exactly the code the daemon runs, from observe to verify.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path

import pytest
from captured import GROUP, A, B, node, views, with_master
from fakes import FakeHAProxy, FakeHAProxyMaster, FakeSentinels
from structlog.testing import capture_logs

from controller import haproxy_worker
from controller.decide import decide
from controller.haproxy import CommandResult, HAProxyError
from controller.haproxy_worker import CHUNK
from controller.loop import PROMOTION_FAST_S, Controller, Promotion
from controller.model import (
    Address,
    AdminState,
    Command,
    Decision,
    HAProxyInfo,
    HAProxyState,
    SentinelView,
)
from controller.pending import Batch, Pending
from controller.redis_nodes import NodeError, Role
from controller.resolver import Resolver
from controller.roster import Roster
from controller.sentinel import Hint
from controller.sentinel_parse import parse_event
from controller.settings import Settings
from lab.wait import wait_until

Emitted = list[tuple[str, dict[str, object]]]
SENTINELS = tuple(views("steady")[i].sentinel for i in range(3))
W, R = f"{GROUP}_master", f"{GROUP}_replicas"


@pytest.fixture
def emitted() -> Emitted:
    return []


@pytest.fixture
def sentinels() -> FakeSentinels:
    return FakeSentinels("steady")


@pytest.fixture
def haproxy() -> FakeHAProxy:
    return FakeHAProxy()


@pytest.fixture
def controller(emitted: Emitted, sentinels: FakeSentinels, haproxy: FakeHAProxy) -> Controller:
    settings = Settings(sentinels=SENTINELS, masters=(GROUP,))
    return Controller(settings, sentinels, [haproxy],
                      on_change=lambda kind, data: emitted.append((kind, data)))


def admin(h: FakeHAProxy) -> dict[str, dict[str, str]]:
    return {b: {n: s.admin.value for n, s in servers.items()}
            for b, servers in h.state().backends.items()}


STEADY = {W: {"redis1a": "ready", "redis1b": "maint"},
          R: {"redis1a": "maint", "redis1b": "ready",
              "redis1a-fallback": "ready", "redis1b-fallback": "maint"}}


# -- whole passes ----------------------------------------------------------------------


def test_first_pass_applies_the_steady_state_and_verifies_it(
    controller: Controller, haproxy: FakeHAProxy
) -> None:
    """From the config state (all disabled) one pass makes the master the writer and the
    replica the reader, in one exchange, and the read-back finds nothing left to do."""
    result = controller.reconcile("start")
    assert admin(haproxy) == STEADY
    (o,) = result.haproxies
    assert all(r.ok for r in o.results) and o.drift_after == 0
    assert controller.counters.passes_with_changes == 1
    assert controller.counters.hand_edits_undone == 0
    assert controller.reconcile("resync").haproxies[0].results == ()


def test_failover_pass_fences_old_master_before_the_new_one_is_ready(
    controller: Controller, sentinels: FakeSentinels, haproxy: FakeHAProxy
) -> None:
    """After the failover the old master is maint with its sessions shut, the new one ready,
    in that order in one batch; the master change is counted once."""
    controller.reconcile("start")
    haproxy.set_sessions(W, "redis1a", 3)
    haproxy.applied.clear()
    sentinels.show("switched")
    controller.reconcile("+switch-master")
    assert admin(haproxy)[W] == {"redis1a": "maint", "redis1b": "ready"}
    assert haproxy.state().backends[W]["redis1a"].sessions == 0
    out = haproxy.applied.index(f"set server {W}/redis1a state maint")
    cut = haproxy.applied.index(f"shutdown sessions server {W}/redis1a")
    ready = haproxy.applied.index(f"set server {W}/redis1b state ready")
    assert out < ready and cut < ready
    assert controller.counters.failovers_seen == 1
    assert controller.counters.hand_edits_undone == 0


def test_failover_also_shuts_the_old_workers_sessions_to_the_old_master(
    sentinels: FakeSentinels, haproxy: FakeHAProxy
) -> None:
    """With a master CLI, the sessions a reload's old worker keeps to the fenced old master
    are shut too, after the current worker's; a pass that shuts nothing asks it nothing."""
    master = FakeHAProxyMaster()
    ctl = Controller(Settings(sentinels=SENTINELS, masters=(GROUP,)), sentinels, [haproxy],
                     haproxy_masters=[master])
    ctl.reconcile("start")
    assert master.asked == []
    master.old = {4242: {(W, "redis1a"): 2, (R, "redis1b"): 1}}
    sentinels.show("switched")
    with capture_logs() as logs:
        ctl.reconcile("+switch-master")
    assert master.asked == [(4242, frozenset({(W, "redis1a")}))]
    assert master.old[4242] == {(R, "redis1b"): 1}
    (line,) = [e for e in logs if e["event"] == "old_worker_sessions_closed"]
    assert line["pid"] == 4242 and line["sessions"] == 2


def test_haproxy_restart_is_noticed_and_the_state_applied_again(
    controller: Controller, haproxy: FakeHAProxy
) -> None:
    """A restarted HAProxy (new Pid, config state) is found by the probe and set right by the
    next pass, which does not count as a hand edit."""
    controller.reconcile("start")
    haproxy.restart()
    assert admin(haproxy)[W]["redis1a"] == "maint"
    assert controller.probe_haproxies()
    controller.reconcile("haproxy_changed")
    assert admin(haproxy) == STEADY
    assert controller.counters.hand_edits_undone == 0


def test_unreachable_haproxy_is_reported_and_caught_up_when_back(
    controller: Controller, haproxy: FakeHAProxy
) -> None:
    """An HAProxy that cannot be reached is marked down; once back, a pass brings it in line."""
    haproxy.down = True
    result = controller.reconcile("start")
    assert result.haproxies[0].error
    assert controller.counters.haproxy_up[haproxy.target] is False
    haproxy.down = False
    assert controller.probe_haproxies()
    controller.reconcile("haproxy_changed")
    assert admin(haproxy) == STEADY
    assert controller.counters.haproxy_up[haproxy.target] is True


def test_undecided_group_leaves_haproxy_as_it_is(
    controller: Controller, sentinels: FakeSentinels, haproxy: FakeHAProxy, emitted: Emitted
) -> None:
    """With only one of three Sentinels answering (even one that names a new master), the group
    is undecided: no command, the last applied state stays, one `undecided` alert."""
    controller.reconcile("start")
    haproxy.applied.clear()
    sentinels.views = views("switched")[:1] + [
        SentinelView(v.sentinel, error="timeout") for v in views("switched")[1:]
    ]
    for _ in range(3):
        result = controller.reconcile("resync")
        assert result.decisions[0].master is None
    assert haproxy.applied == []
    assert admin(haproxy) == STEADY
    assert [k for k, _ in emitted] == ["undecided"]
    assert controller.counters.undecided == {GROUP}


def test_hand_edit_is_undone_and_reported_once(
    controller: Controller, haproxy: FakeHAProxy, emitted: Emitted
) -> None:
    """A server put in maint by hand while Sentinel did not change is set ready again, and
    that pass counts as a hand edit undone (log line and webhook `drift_corrected`)."""
    controller.reconcile("start")
    haproxy.apply(f"set server {W}/redis1a state maint")
    controller.reconcile("resync")
    assert admin(haproxy) == STEADY
    assert controller.counters.hand_edits_undone == 1
    assert [k for k, _ in emitted] == ["drift_corrected"]


def test_closing_a_leftover_session_after_a_fence_is_not_a_hand_edit(
    controller: Controller, sentinels: FakeSentinels, haproxy: FakeHAProxy, emitted: Emitted
) -> None:
    """A session still open on the fenced old master is shut on the next pass without calling
    it a hand edit: nobody changed an admin state."""
    controller.reconcile("start")
    sentinels.show("switched")
    controller.reconcile("+switch-master")
    haproxy.set_sessions(W, "redis1a", 1)  # a client that raced the shutdown
    controller.reconcile("resync")
    assert haproxy.applied[-1] == f"shutdown sessions server {W}/redis1a"
    assert controller.counters.hand_edits_undone == 0
    assert "drift_corrected" not in [k for k, _ in emitted]


def test_refused_command_is_counted_and_left_as_drift(
    controller: Controller, haproxy: FakeHAProxy
) -> None:
    """A command HAProxy refuses is a failed result; the read-back still shows the drift."""
    real_apply = haproxy.apply

    def refuse_ready(text: str) -> str:
        return "Permission denied" if text.endswith("state ready") else real_apply(text)

    haproxy.apply = refuse_ready  # type: ignore[method-assign]  # a refusing HAProxy, one test
    result = controller.reconcile("start")
    (o,) = result.haproxies
    assert [r.output for r in o.results if not r.ok] == ["Permission denied"] * 3
    assert controller.counters.commands_failed == 3
    assert o.drift_after == 3


# -- bookkeeping -----------------------------------------------------------------------


def verdict(state: str, min_voters: int = 2) -> Decision:
    return decide(GROUP, views(state), min_voters)


def test_failover_sequence_emits_each_change_once(
    controller: Controller, emitted: Emitted
) -> None:
    """Through a whole captured failover: one failover, replica lost/back, nothing else."""
    for state in ("steady", "replica_dead", "steady", "master_down", "promoted", "switched",
                  "old_master_returned", "converted", "converted"):
        controller._note_decisions([verdict(state)], trigger=state)
    assert [(k, d.get("replica") or d.get("to")) for k, d in emitted] == [
        ("replica_lost", str(node(B))),
        ("replica_back", str(node(B))),
        ("failover", str(node(B))),
        ("replica_back", str(node(A))),
    ]
    assert emitted[2][1] == {"group": GROUP, "from": str(node(A)), "to": str(node(B)), "epoch": 1}
    assert controller.counters.failovers_seen == 1
    assert controller.counters.undecided == set()


def test_undecided_is_emitted_once_and_compared_with_the_last_verdict(
    controller: Controller, emitted: Emitted
) -> None:
    """Undecided passes emit once per reason; the next verdict is compared with the last decided."""
    controller._note_decisions([verdict("steady")], "resync")
    for _ in range(3):
        controller._note_decisions([verdict("steady", min_voters=4)], "resync")
    assert [k for k, _ in emitted] == ["undecided"]
    assert controller.counters.undecided == {GROUP}
    controller._note_decisions([verdict("switched")], "+switch-master")
    assert [k for k, _ in emitted] == ["undecided", "failover"]
    assert controller.counters.failovers_seen == 1
    assert controller.counters.undecided == set()


class PromotedNodes:
    """Redis nodes that all answer ROLE master."""

    def roles(self, addrs: Collection[Address]) -> dict[Address, Role | NodeError]:
        return dict.fromkeys(addrs, Role("master"))

    def forget(self, keep: set[Address]) -> None:
        pass


@pytest.mark.parametrize(("timeout_ms", "watched"), [(10**400, True), (-(10**400), False)])
def test_a_failover_timeout_too_big_for_a_float_does_not_break_the_pass(
    sentinels: FakeSentinels, haproxy: FakeHAProxy, timeout_ms: int, watched: bool
) -> None:
    """A Sentinel reporting a failover-timeout of 400 digits (parsed fine) while its leader
    promotes a replica: the pass watches the replica (until the past, if negative) instead of
    raising OverflowError (found by tests/test_properties_loop.py)."""
    sentinels.show("selected")
    sentinels.views = [with_master(v, failover_timeout_ms=timeout_ms) for v in sentinels.views]
    settings = Settings(sentinels=SENTINELS, masters=(GROUP,))
    controller = Controller(settings, sentinels, [haproxy], nodes=PromotedNodes())
    (d,) = controller.reconcile("+selected-slave").decisions
    assert d.fenced and d.promoting is not None
    assert controller.promotions[GROUP].addr == d.promoting
    assert (controller.poll_promotions() == [GROUP]) is watched


def test_a_promotion_watch_asks_less_often_after_its_first_second(
    sentinels: FakeSentinels, haproxy: FakeHAProxy
) -> None:
    """The replica being promoted is asked ROLE every `promotion_poll_interval_s` while its
    watch is young (Sentinel sends `REPLICAOF NO ONE` within a tick or two of choosing it);
    a watch still waiting after PROMOTION_FAST_S is asked ten times less often, for the rest
    of the failover timeout."""
    sentinels.show("selected")
    settings = Settings(sentinels=SENTINELS, masters=(GROUP,), promotion_poll_interval_s=0.002)
    controller = Controller(settings, sentinels, [haproxy], nodes=PromotedNodes())
    controller.reconcile("+selected-slave")
    assert controller.promotion_poll_s() == 0.002
    controller.promotions[GROUP].since -= PROMOTION_FAST_S
    assert controller.promotion_poll_s() == pytest.approx(0.02)


def hint(channel: str, text: str, received: float = 100.0) -> Hint:
    return Hint("127.0.0.1:1", "event", received, parse_event(channel, text))


def test_hints_that_warrant_a_pass(controller: Controller) -> None:
    """An event naming a known group asks for a pass of that group only; events naming no
    group, or a group not known yet, and connection changes ask for a full pass; noise,
    `+new-epoch` and groups not managed ask for none."""
    assert controller._classify(hint("+switch-master", f"{GROUP} 127.0.0.2 1 127.0.0.3 1")) \
        == ("+switch-master", GROUP)
    assert controller._classify(hint("+sdown", f"master {GROUP} 127.0.0.2 1")) == ("+sdown",
                                                                                   GROUP)
    assert controller._classify(hint("+new-epoch", "3")) is None  # see the test below
    assert controller._classify(hint("+tilt", "#tilt mode entered")) == ("+tilt", None)
    assert controller._classify(hint("+vote-for-leader", "1ce51fd96d 1")) is None
    assert controller._classify(hint("+switch-master", "other 127.0.0.2 1 127.0.0.3 1")) is None
    assert controller._classify(Hint("127.0.0.1:1", "connected", 1.0)) == (
        "sentinel_connected", None)
    assert controller._classify(Hint("127.0.0.1:1", "disconnected", 1.0, detail="EOF")) == (
        "sentinel_disconnected", None)
    assert controller._classify(Hint("/s", "haproxy_changed", 1.0)) == ("haproxy_changed", None)
    assert controller._classify(Hint("127.0.0.1:1", "bad_event", 1.0, detail="x")) is None


def test_new_epoch_is_logged_in_the_timeline_without_a_pass(controller: Controller) -> None:
    """`+new-epoch` names no group and always comes with an event that does: it starts no
    pass (a full pass on it read every group at every failover), but operators still see it
    in the failover timeline as a `sentinel_event` line."""
    with capture_logs() as logs:
        assert controller._classify(hint("+new-epoch", "3")) is None
        controller._flush_logs()
    (line,) = [e for e in logs if e["event"] == "sentinel_event"]
    assert (line["channel"], line["text"], line["log_level"]) == ("+new-epoch", "3", "info")


def test_event_for_a_group_not_known_yet_asks_for_a_full_pass(sentinels: FakeSentinels) -> None:
    """Without a fixed group list, an event about a group no Sentinel listed yet (a new
    `SENTINEL MONITOR`) is served by a full pass, which finds it."""
    ctl = Controller(Settings(sentinels=SENTINELS), sentinels, [FakeHAProxy()])
    assert ctl._classify(hint("+monitor", "master newgroup 127.0.0.9 1 quorum 2")) == (
        "+monitor", None)


def test_haproxy_identity_changes_are_noticed(controller: Controller) -> None:
    """First sight, a new Pid or Start_time, or a return after being down count as new; a
    restart or a return also marks every group for a sync and tells the loop."""
    w = controller.workers[0]
    info = HAProxyInfo(pid=10, start_time_s=1000)
    assert w._seen(info)
    assert not w._seen(info)
    assert w._seen(HAProxyInfo(pid=11, start_time_s=1000))
    assert w._seen(HAProxyInfo(pid=11, start_time_s=1001))
    w._down("cannot talk to the socket")
    assert controller.counters.haproxy_up[w.target] is False
    assert w._seen(HAProxyInfo(pid=11, start_time_s=1001))
    assert controller.counters.haproxy_up[w.target] is True
    kinds = [h.kind for h in controller.hints.get(0)]
    assert kinds == ["haproxy_changed"] * 3


def test_a_reload_is_caught_when_the_probe_first_reaches_the_old_worker(
    controller: Controller, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """For a moment after a reload both workers accept on the inherited sockets: when the probe
    that the state file's opening asked for reaches the old worker, the watch asks for
    another until the worker has recorded the new one (CI once saw the reload missed until
    the next poll)."""
    w = controller.workers[0]
    old, new = HAProxyInfo(pid=10, start_time_s=1000), HAProxyInfo(pid=11, start_time_s=1001)
    assert w._seen(old)
    answers = iter([old, new, old, new, new])  # watch, watch, probe, watch, probe
    monkeypatch.setattr(w.h, "info", lambda: next(answers))
    monkeypatch.setattr(w, "_probe_now", w.probe)  # the worker's thread, at once
    w._catch_new_identity()
    assert w._identity == new


def test_fake_haproxy_applies_commands_as_haproxy_does(haproxy: FakeHAProxy) -> None:
    """The fake's own contract: state changes apply, an unknown server is refused by name."""
    assert haproxy.apply(f"set server {W}/redis1a state ready") == ""
    assert haproxy.state().backends[W]["redis1a"].admin is AdminState.READY
    assert haproxy.apply(f"set server {W}/nosuch state ready") == "No such server."


# -- targeted passes, early verdicts, workers ----------------------------------------------


def test_targeted_pass_reads_only_its_group_from_sentinels_and_haproxy(
    controller: Controller, sentinels: FakeSentinels, haproxy: FakeHAProxy
) -> None:
    """A pass for one group asks the Sentinels about that group only and reads only that
    group's two backends from HAProxy (`show servers state B` / `show stat B 4 -1`)."""
    controller.reconcile("start")
    sentinels.reads.clear()
    haproxy.reads.clear()
    sentinels.show("switched")
    controller._targeted(Batch({GROUP: time.monotonic()}, "+switch-master", {}))
    (out,) = controller.workers[0].drain()
    assert sentinels.reads == [[GROUP]]
    assert haproxy.reads[0] == [W, R]
    assert admin(haproxy)[W] == {"redis1a": "maint", "redis1b": "ready"}
    assert out.drift_after == 0


def test_pass_line_says_how_long_the_sentinels_took(
    controller: Controller, sentinels: FakeSentinels, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sentinels_ms` on the pass line: the part of `duration_ms` spent waiting for the
    Sentinel round, so an operator sees which side made a slow pass slow."""
    controller.reconcile("start")
    read = sentinels.read

    def slow_read(*args: object, **kwargs: object) -> list[SentinelView]:
        time.sleep(0.03)
        return read(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sentinels, "read", slow_read)
    sentinels.show("switched")
    with capture_logs() as logs:
        controller._targeted(Batch({GROUP: time.monotonic()}, "+switch-master", {}))
    (line,) = [e for e in logs if e["event"] == "pass"]
    assert 30 <= line["sentinels_ms"] <= line["duration_ms"]


def test_pass_goes_on_without_a_slow_sentinel_and_a_late_answer_that_matters_passes_again(
    controller: Controller, sentinels: FakeSentinels, haproxy: FakeHAProxy
) -> None:
    """Two Sentinels agree (epoch 0, master A): the pass decides without the third. The third
    answers late with epoch 1, master B: the verdict would change, so the group is passed
    again counting that late answer, and B takes the writes."""
    controller.reconcile("start")
    slow = SENTINELS[2]
    sentinels.views = views("steady")[:2] + views("switched")[2:]
    sentinels.slow = {slow}
    controller._targeted(Batch({GROUP: time.monotonic()}, "+sdown", {}))
    controller.workers[0].drain()
    assert admin(haproxy) == STEADY
    sentinels.deliver()
    work = Pending()
    for h in controller.hints.get(0):
        controller._take(h, work)
    batch = work.take_groups(64)
    assert batch is not None and batch.trigger == "late_answer"
    assert set(batch.carry) == {slow}
    controller._targeted(batch)
    controller.workers[0].drain()
    assert admin(haproxy)[W] == {"redis1a": "maint", "redis1b": "ready"}


def test_late_answer_that_agrees_causes_no_pass(
    controller: Controller, sentinels: FakeSentinels
) -> None:
    """The slow Sentinel's late answer says what the others said: nothing to pass again."""
    controller.reconcile("start")
    sentinels.slow = {SENTINELS[2]}
    controller._targeted(Batch({GROUP: time.monotonic()}, "+sdown", {}))
    sentinels.deliver()
    work = Pending()
    for h in controller.hints.get(0):
        controller._take(h, work)
    assert not work.has_groups and not work.has_full


def test_worker_syncs_a_group_wanted_twice_once(
    controller: Controller, haproxy: FakeHAProxy
) -> None:
    """A group handed over twice before its worker got to it is read and synced once, with
    the latest wanted state and the earliest hint time."""
    controller.reconcile("start")
    haproxy.reads.clear()
    w = controller.workers[0]
    for t in (2.0, 1.0):
        controller._targeted(Batch({GROUP: t}, "+sdown", {}))
    assert w.pending() == 1
    w.drain()
    assert haproxy.reads == [[W, R]]


def test_urgent_groups_are_synced_before_a_full_pass_chunk(controller: Controller) -> None:
    """A worker holding a full pass's groups takes a targeted pass's group first."""
    w = controller.workers[0]
    controller.reconcile("start")
    wanted = dict(w._wanted)
    w.want({f"bg{i}": wanted[GROUP] for i in range(100)}, dict.fromkeys(
        (f"bg{i}" for i in range(100)), 1.0), urgent=False)
    w.want({GROUP: wanted[GROUP]}, {GROUP: 2.0}, urgent=True)
    with w._cond:
        assert list(w._take()) == [GROUP]
        assert len(w._take()) == CHUNK


class HungHAProxy(FakeHAProxy):
    """An HAProxy that can hang (SIGSTOP): while hung, every exchange waits 0.3 s and fails
    as a timeout does."""

    def __init__(self, target: str) -> None:
        super().__init__(target=target)
        self.hung = threading.Event()

    def _wait(self) -> None:
        if self.hung.is_set():
            time.sleep(0.3)  # the exchange's timeout, as a hung HAProxy costs it
            raise HAProxyError(self.target, "no complete reply within 0.3s")

    def info(self) -> HAProxyInfo:
        self._wait()
        return super().info()

    def state(self, backends: Sequence[str] | None = None) -> HAProxyState:
        self._wait()
        return super().state(backends)

    def run(self, commands: Sequence[Command]) -> list[CommandResult]:
        self._wait()
        return super().run(commands)


def test_hung_haproxy_delays_neither_the_other_one_nor_the_loop_and_is_caught_up(
    sentinels: FakeSentinels,
) -> None:
    """The daemon's loop with two HAProxy: the first hangs; a failover reaches the second at
    once (its worker does not wait for the first); when the first answers again its worker
    brings it up to date by itself."""
    hung, healthy = HungHAProxy("/fake/1.sock"), FakeHAProxy(target="/fake/2.sock")
    settings = Settings(sentinels=SENTINELS, masters=(GROUP,), haproxy_poll_interval_s=0.05,
                        write_lease=False)
    ctl = Controller(settings, sentinels, [hung, healthy])
    with running(ctl):
        wait_until(lambda: admin_of(hung) == STEADY == admin_of(healthy), 5, "initial state")
        hung.hung.set()
        sentinels.show("switched")
        ctl.hints.put(hint("+switch-master", f"{GROUP} 127.0.0.2 1 127.0.0.3 1",
                           time.monotonic()))
        wait_until(lambda: admin_of(healthy)[W] == {"redis1a": "maint", "redis1b": "ready"},
                   1.0, "the healthy HAProxy to follow the failover", 0.005)
        assert admin_of(hung) == STEADY
        hung.hung.clear()
        wait_until(lambda: admin_of(hung)[W] == {"redis1a": "maint", "redis1b": "ready"},
                   2.0, "the hung HAProxy caught up", 0.005)


def test_a_restarted_haproxy_is_seen_by_the_watch_not_by_the_next_probe(
    sentinels: FakeSentinels, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The daemon's loop with the periodic probe and the probe backoff at a minute and no
    write lease (nothing else asks the HAProxy): when it goes down its idle watch session
    ends, and the worker probes and marks it down at once; when it is back, restarted (its
    config's state), the watch's next connect makes the worker probe and set it right, where
    the probe would have come a minute later."""
    monkeypatch.setattr(haproxy_worker, "MIN_BACKOFF_S", 60.0)
    h = FakeHAProxy()
    settings = Settings(sentinels=SENTINELS, masters=(GROUP,), haproxy_poll_interval_s=60.0,
                        resync_interval_s=60.0, write_lease=False)
    ctl = Controller(settings, sentinels, [h])
    with running(ctl):
        wait_until(lambda: admin_of(h) == STEADY, 5, "initial state")
        h.down = True
        wait_until(lambda: ctl.counters.haproxy_up.get(h.target) is False, 5,
                   "the HAProxy seen down")
        h.restart()
        assert admin_of(h) != STEADY
        h.down = False
        wait_until(lambda: admin_of(h) == STEADY, 5, "the restarted HAProxy set right")
        assert ctl.counters.haproxy_up[h.target] is True


@contextlib.contextmanager
def running(ctl: Controller) -> Iterator[None]:
    """The daemon's loop in a thread of its own; stopped (within 5 s) when the block ends."""
    stop = threading.Event()
    loop = threading.Thread(target=ctl.run, args=(stop,), daemon=True)
    loop.start()
    try:
        yield
    finally:
        stop.set()
        loop.join(5)
    assert not loop.is_alive()


class Ordered(FakeHAProxy):
    """A fake HAProxy that has the lease map and records, in order, every command and every
    lease pushed into the map."""

    def __init__(self) -> None:
        super().__init__()
        self.map_files = ["lease.map"]
        self.ops: list[str] = []

    def set_map(self, file: str, key: str, value: str) -> None:
        super().set_map(file, key, value)
        self.ops.append("lease")

    def apply(self, text: str) -> str:
        self.ops.append(text)
        return super().apply(text)


def test_a_returning_haproxy_gets_its_lease_only_after_every_group_is_synced(
    sentinels: FakeSentinels,
) -> None:
    """An HAProxy back from down (it may have started from a stale server-state file) gets
    the lease only after its groups were synced: never writes to a master it still holds
    from before; and a starting controller pushes none before its first full pass synced."""
    h = Ordered()
    settings = Settings(sentinels=SENTINELS, masters=(GROUP,), haproxy_poll_interval_s=0.05,
                        resync_interval_s=60.0, write_lease=False)
    ctl = Controller(settings, sentinels, [h])
    with running(ctl):
        wait_until(lambda: admin_of(h) == STEADY and "lease" in h.ops, 5, "initial state")
        first = h.ops.index("lease")
        assert any(op.endswith(f"{W}/redis1a state ready") for op in h.ops[:first])
        h.down = True
        wait_until(lambda: ctl.counters.haproxy_up.get(h.target) is False, 5,
                   "the HAProxy seen down")
        h.restart()
        h.state_ = with_admin(h.state_, W, "redis1b", AdminState.READY)  # a stale file's
        h.ops.clear()
        h.down = False
        wait_until(lambda: admin_of(h) == STEADY and "lease" in h.ops, 5,
                   "the returning HAProxy synced and given the lease")
        first = h.ops.index("lease")
        assert f"set server {W}/redis1b state maint" in h.ops[:first]
        assert [op for op in h.ops[first:] if op != "lease"] == []


class Reloading(FakeHAProxy):
    """A fake HAProxy whose reload (`restart()`) leaves the watch's held session where it is,
    as a master-worker reload leaves it on the old worker: only asking shows the change."""

    def hold(self, max_s: float, on_open: Callable[[], None] | None = None) -> bool:
        if self.down:
            raise HAProxyError(self.target, "cannot talk to the socket: refused")
        self._released.clear()
        if on_open is not None:
            on_open()
        self._released.wait(max_s)
        return False


def test_a_reload_is_seen_when_the_new_haproxy_opens_its_state_file(
    sentinels: FakeSentinels, tmp_path: Path,
) -> None:
    """With the probe at a minute and a watch session the reload does not end, the new
    HAProxy opening the server-state file the worker keeps (as it does at its start) makes
    the worker ask until the new identity answers, and set it right."""
    h = Reloading(target=str(tmp_path / "admin.sock"))
    settings = Settings(sentinels=SENTINELS, masters=(GROUP,), haproxy_poll_interval_s=60.0,
                        resync_interval_s=60.0, write_lease=False)
    ctl = Controller(settings, sentinels, [h])
    with running(ctl):
        state_file = tmp_path / "server-state"
        wait_until(lambda: admin_of(h) == STEADY and state_file.exists(), 5, "initial state")
        h.restart()  # the new worker: its config's state
        assert admin_of(h) != STEADY

        def loaded_and_set_right() -> bool:
            state_file.read_text()  # as a starting HAProxy loads it (again: the file watch
            return admin_of(h) == STEADY  # starts with the worker thread, maybe after this)

        wait_until(loaded_and_set_right, 2, "the reloaded HAProxy set right")


def with_admin(state: HAProxyState, backend: str, server: str,
               admin: AdminState) -> HAProxyState:
    servers = dict(state.backends[backend])
    servers[server] = dataclasses.replace(servers[server], admin=admin)
    return HAProxyState(state.info, {**state.backends, backend: servers})


def admin_of(h: FakeHAProxy) -> dict[str, dict[str, str]]:
    """Admin states straight from the fake's memory (asking a hung one would block)."""
    return {b: {n: s.admin.value for n, s in servers.items()}
            for b, servers in h.state_.backends.items()}


def test_hint_already_answered_by_a_later_read_is_not_passed_again(
    controller: Controller,
) -> None:
    """The same event from the other Sentinels, received before the pass that the first one
    started asked the Sentinels, needs no pass of its own; one received after it does."""
    controller.reconcile("start")
    first = hint("+switch-master", f"{GROUP} 127.0.0.2 1 127.0.0.3 1", time.monotonic())
    second = hint("+switch-master", f"{GROUP} 127.0.0.2 1 127.0.0.3 1", time.monotonic())
    controller._targeted(Batch({GROUP: first.received}, "+switch-master", {}))
    work = Pending()
    controller._take(second, work)
    assert not work.has_groups
    later = hint("+switch-master", f"{GROUP} 127.0.0.2 1 127.0.0.3 1", time.monotonic())
    controller._take(later, work)
    assert work.has_groups


def test_an_event_a_full_pass_chunk_answers_counts_from_the_event_not_from_the_pass(
    controller: Controller, sentinels: FakeSentinels,
) -> None:
    """An event that arrives just before a full pass's chunk asks about its group needs no
    pass of its own (the chunk's read answers it), but the chunk hands that group over as a
    targeted pass would: urgent, with the event's trigger, its latency counted from the event
    (it was counted from the start of the full pass: 300+ ms for a failover applied in a
    few)."""
    controller.reconcile("start")
    p = controller._start_full("resync", time.monotonic() - 0.3)
    sentinels.show("switched")
    received = time.monotonic()
    controller.hints.put(hint("+switch-master", f"{GROUP} 127.0.0.2 1 127.0.0.3 1", received))
    work = Pending()
    with capture_logs() as logs:
        assert controller._full_step(p, work)
        controller.workers[0].drain()
    assert not work.has_groups  # no pass of its own
    changed = next(e for e in logs if e["event"] == "master_changed")
    assert changed["trigger"] == "+switch-master"
    ready = next(e for e in logs if e["event"] == "server_state_changed"
                 and e["backend"] == W and e["to"] == "ready")
    assert ready["latency_ms"] < (time.monotonic() - received) * 1000 + 1
    assert ready["latency_ms"] < 300


def test_a_switch_to_the_master_already_followed_needs_no_pass(
    controller: Controller,
) -> None:
    """Another Sentinel's `+switch-master` to the master HAProxy already routes writes to
    (received after the pass asked) warrants no pass; one to another node, or while the
    group is fenced, does."""
    controller.reconcile("start")
    master = controller._decisions[GROUP].master
    assert master is not None
    work = Pending()
    same = f"{GROUP} 127.0.0.9 1 {master.host} {master.port}"
    controller._take(hint("+switch-master", same, time.monotonic()), work)
    assert not work.has_groups
    controller._take(hint("+switch-master", f"{GROUP} {master.host} {master.port} 127.0.0.9 1",
                          time.monotonic()), work)
    assert work.has_groups
    work = Pending()
    controller._decisions[GROUP] = dataclasses.replace(controller._decisions[GROUP], fenced=True)
    controller._take(hint("+switch-master", same, time.monotonic()), work)
    assert work.has_groups


def test_a_step_of_the_promotion_already_followed_needs_no_pass(
    controller: Controller,
) -> None:
    """`+failover-state-send-slaveof-noone` (and the other promotion steps) about the replica
    the verdict already names as promoting warrants no pass: it would only compete with the
    clients Sentinel's CLIENT KILL on that replica makes reconnect. About another replica, or
    before the verdict names one, it does."""
    controller.reconcile("start")
    b = node(B)
    text = f"slave {b} {b.host} {b.port} @ {GROUP} 127.0.0.9 1"
    work = Pending()
    controller._take(hint("+failover-state-send-slaveof-noone", text, time.monotonic()), work)
    assert work.has_groups, "no promotion known yet"
    controller._decisions[GROUP] = dataclasses.replace(controller._decisions[GROUP],
                                                       promoting=b)
    work = Pending()
    controller._take(hint("+failover-state-send-slaveof-noone", text, time.monotonic()), work)
    controller._take(hint("+selected-slave", text, time.monotonic()), work)
    assert not work.has_groups
    other = text.replace(f"{b.host} {b.port}", "127.0.0.8 1")
    controller._take(hint("+selected-slave", other, time.monotonic()), work)
    assert work.has_groups


def test_the_switch_burst_of_a_sentinel_leaves_membership_to_the_rechecks(
    controller: Controller,
) -> None:
    """A Sentinel's `+config-update-from` (its `+switch-master`, published in the same instant,
    says where it went) and its `+slave` (an entry without INFO yet) warrant no pass of their
    own: `+slave` schedules the roster's re-check passes instead (without a roster, which
    would schedule none, it is passed). The `+switch-master` to another node still does."""
    controller.reconcile("start")
    slave = f"slave 127.0.0.9:1 127.0.0.9 1 @ {GROUP} 127.0.0.2 1"
    work = Pending()
    controller._take(hint("+slave", slave, time.monotonic()), work)
    assert work.has_groups, "no roster"
    rostered = Controller(controller.settings, controller.reader, controller.haproxies,
                        roster=Roster(Resolver()))
    rostered.reconcile("start")
    assert rostered.roster is not None
    master = rostered._decisions[GROUP].master
    assert master is not None
    work = Pending()
    rostered._take(hint("+config-update-from", f"sentinel {'a' * 40} 127.0.0.9 26379 @ "
                        f"{GROUP} {master.host} {master.port}", time.monotonic()), work)
    rostered.roster.hint(h := hint("+slave", f"slave 127.0.0.9:1 127.0.0.9 1 @ {GROUP} "
                                   f"{master.host} {master.port}", time.monotonic()))
    rostered._take(h, work)
    assert not work.has_groups
    assert GROUP in rostered.roster.recheck_groups
    rostered._take(hint("+switch-master", f"{GROUP} {master.host} {master.port} 127.0.0.9 1",
                        time.monotonic()), work)
    assert work.has_groups


def test_while_a_promotion_is_watched_a_pass_waits_for_the_leader(
    controller: Controller, sentinels: FakeSentinels
) -> None:
    """Only the failover leader names the replica it promotes: while that promotion is
    watched, a pass about the group does not go on without the leader's answer, even when the
    two others agree."""
    controller.reconcile("start")
    leader = SENTINELS[2]
    controller.promotions[GROUP] = Promotion(node(B), time.monotonic() + 10,
                                             leaders=frozenset({leader}))
    sentinels.slow = {leader}
    views_, _ = controller._read_decide([GROUP], None, early=True)
    assert [v.problem for v in views_] == ["", "", ""]  # the leader's answer was awaited
    controller.promotions.clear()
    views_, _ = controller._read_decide([GROUP], None, early=True)
    assert [v.problem for v in views_] == ["", "", "pending"]


def test_a_full_pass_waits_for_a_targeted_pass_commands_but_not_for_long(
    controller: Controller, sentinels: FakeSentinels, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a targeted pass the next chunk of a full pass waits while a worker thread still
    has the hinted group to apply (they would share the GIL), never past its bound, and not
    for a worker whose HAProxy is down."""
    controller.reconcile("start")
    sentinels.show("switched")
    worker = controller.workers[0]
    # Taken for a thread, but none runs: the group stays pending until drained below.
    monkeypatch.setattr(type(worker), "threaded", property(lambda _self: True))
    start = time.monotonic()
    controller._targeted(Batch({GROUP: start}, "+switch-master", {}))
    assert time.monotonic() - start < 1.0  # the hand-over waited for it a bounded time only
    assert worker.urgent_pending()
    assert controller._hold_full(time.monotonic() + 10)
    assert not controller._hold_full(time.monotonic() - 1)  # the bound
    worker.up = False
    assert not controller._hold_full(time.monotonic() + 10)
    worker.up = True
    worker.drain()
    assert not worker.urgent_pending()
    assert not controller._hold_full(time.monotonic() + 10)


def test_a_worker_done_applying_wakes_a_held_full_pass_and_nothing_else(
    controller: Controller,
) -> None:
    """A worker that applied hinted groups wakes the loop (an `applied` hint) only while the
    loop holds a full pass back for it; the hint starts no pass."""
    controller.applied()
    assert controller.hints.get(0.0) == []
    controller._holding = True
    controller.applied()
    hints = controller.hints.get(0.0)
    assert [h.kind for h in hints] == ["applied"]
    assert controller._classify(hints[0]) is None


def test_a_group_no_sentinel_monitors_any_more_is_forgotten(sentinels: FakeSentinels) -> None:
    """A group that was undecided when the last Sentinel stopped monitoring it (`SENTINEL
    REMOVE` on each in turn) is forgotten at the next full pass: no verdict, no undecided
    clock (so `/healthz` does not stay unhealthy for ever), nothing wanted from HAProxy (a
    restarted HAProxy does not get its old state back); one `group_forgotten` line."""
    settings = Settings(sentinels=SENTINELS)
    haproxy = FakeHAProxy()
    ctl = Controller(settings, sentinels, [haproxy])
    ctl.reconcile("start")
    assert GROUP in ctl.verdicts() and GROUP in ctl.workers[0]._wanted
    sentinels.views = [SentinelView(v.sentinel, error="down") for v in views("steady")]
    ctl.reconcile("resync")
    assert ctl.counters.undecided == {GROUP} and GROUP in ctl.counters.undecided_since
    sentinels.views = views("steady")
    sentinels.names = []  # every Sentinel answered, none monitors it
    with capture_logs() as logs:
        ctl.reconcile("resync")
    assert [e["group"] for e in logs if e["event"] == "group_forgotten"] == [GROUP]
    assert GROUP not in ctl.verdicts()
    assert ctl.counters.undecided == set() and ctl.counters.undecided_since == {}
    assert GROUP not in ctl.workers[0]._wanted
    assert (haproxy.target, GROUP) not in ctl.counters.write_servers


def test_a_sync_that_raises_loses_neither_its_groups_nor_the_loop_s_wait(
    controller: Controller, haproxy: FakeHAProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in a worker's sync (an exception that is not an HAProxy error) is logged by the
    thread and the batch stays to do, no longer marked urgent (the loop does not wait for
    it), and the loop is told the hinted groups are done with."""
    controller.reconcile("start")
    w = controller.workers[0]
    w._thread = threading.current_thread()  # as if threaded: `_once` is what the thread runs
    told: list[bool] = []
    monkeypatch.setattr(controller, "applied", lambda: told.append(True))

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(w, "sync", broken)
    w.want({GROUP: w._wanted[GROUP]}, {GROUP: 1.0}, urgent=True)
    with pytest.raises(RuntimeError):
        w._once()
    assert told == [True]
    assert not w.urgent_pending()
    assert w.pending() == 1


class SplitFailHAProxy(FakeHAProxy):
    """An HAProxy whose command exchange fails after the first command went through (a
    command list split in two exchanges, the second timing out)."""

    def run(self, commands: Sequence[Command]) -> list[CommandResult]:
        done = [CommandResult(commands[0], self.apply(commands[0].text))]
        e = HAProxyError(self.target, "no complete reply within 2s", commands[1].text)
        e.partial = done
        raise e


def test_commands_applied_before_a_failed_exchange_are_reported(
    sentinels: FakeSentinels,
) -> None:
    """When the second exchange of a sync fails, the change the first one made (HAProxy ran
    it) still has its `server_state_changed` line and is counted as applied."""
    h = SplitFailHAProxy()
    ctl = Controller(Settings(sentinels=SENTINELS, masters=(GROUP,)), sentinels, [h])
    with capture_logs() as logs:
        ctl.reconcile("start")
    changed = [e for e in logs if e["event"] == "server_state_changed"]
    assert len(changed) == 1 and ctl.counters.commands_applied == 1
    assert h.applied[0].endswith(f"{changed[0]['backend']}/{changed[0]['server']} state "
                                 f"{changed[0]['to']}")
