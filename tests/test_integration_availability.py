"""Availability through failovers on real processes: reads never stop while a node of the group
can serve them, and writes follow the promotion as it happens, never to a node Sentinel did
not elect (issue: "Availability during a failover").

Readers and writers are the lab's probes (one held connection, one new connection per
request); every wait is a bounded poll of a condition.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest
from itest_support import (
    FAILOVER_S,
    ControllerFactory,
    StackFactory,
    StatePoller,
    ready,
    wait_state,
)

from controller.model import Address
from lab.compare import LeaderLoss, Setup, run_measured, spec_for
from lab.daemon import ControllerDaemon, ts_of
from lab.localstack import LocalStack, free_port
from lab.measure import summarize
from lab.probes import (
    EventRecorder,
    Mark,
    Reader,
    ReaderProcess,
    Writer,
    _reader_child,
    event_is_for,
    read_back,
)
from lab.resp import RespConn
from lab.wait import wait_until

pytestmark = pytest.mark.integration

G = "redis1"


@contextmanager
def readers(stack: LocalStack) -> Iterator[list[Reader]]:
    """A held-connection reader and a new-connection-per-read reader on the read port."""
    stop = threading.Event()
    rs = [Reader(stack.read_frontend(G), "k", stop, interval_s=0.005, reconnect_each=bool(i),
                 reader_id=i) for i in range(2)]
    for r in rs:
        r.start()
    try:
        wait_until(lambda: all(any(s.ok for s in r.samples) for r in rs), 10, "first reads")
        yield rs
    finally:
        stop.set()
        for r in rs:
            r.join(5)


def failed_reads(r: Reader, since: float) -> list[str]:
    return [f"{s.t - since:+.3f}s {s.error}" for s in r.samples if s.t >= since and not s.ok]


# Sentinel's promotion is one MULTI/EXEC on the replica: REPLICAOF NO ONE (the node logs
# "MASTER MODE enabled"), CONFIG REWRITE (an fsync), CLIENT KILL TYPE normal. The kill
# follows the log line by the rewrite's time; this bounds it generously on a busy CI machine.
KILL_AFTER_LOG_S = 0.25


def promoted_at(stack: LocalStack, node: str) -> float | None:
    """When Sentinel made `node` master: its log's `MASTER MODE enabled` line (local time, ms;
    the log's clock is this machine's), or None when the log has no such line."""
    for line in stack.log_path(node).read_text(errors="replace").splitlines():
        if "MASTER MODE enabled" in line:
            # "1234:M 27 Nov 2026 20:31:16.298 * MASTER MODE enabled (user request ...)"
            stamp = line.split(" ", 1)[1].split(" * ", 1)[0]
            whole, ms = stamp.rsplit(".", 1)
            return time.mktime(time.strptime(whole, "%d %b %Y %H:%M:%S")) + int(ms) / 1000
    return None


def cut_by_the_promotion(r: Reader, since: float, cut: float | None) -> list[str]:
    """The failed reads that were in flight when Sentinel's CLIENT KILL closed every
    connection of the promoted replica: closed mid-request, just after it became master."""
    if cut is None:
        return []
    return [f"{s.t - since:+.3f}s {s.error}" for s in r.samples
            if s.t >= since and not s.ok and "closed" in s.error
            and cut - 0.002 <= s.t <= cut + KILL_AFTER_LOG_S]


@pytest.mark.parametrize("replicas", [1, 2], ids=["2-node", "3-node"])
def test_reads_keep_flowing_through_a_master_sigkill(
    make_stack: StackFactory, make_controller: ControllerFactory, replicas: int
) -> None:
    """While the master is killed, failed over and gone, the new-connection reader reads without
    an error, but for one read in flight at the instant Sentinel promotes the replica (its
    CLIENT KILL closes that node's connections): replicas keep serving while their master is
    down, and the promoted one serves through its promotion. The held connection loses at
    most one read: Sentinel kills the promoted replica's client connections with `REPLICAOF
    NO ONE`, and (3-node) those of the other replica when it reconfigures it, which meanwhile
    takes no new reads: not during the promotion, nor between the leader's `+promoted-slave`
    and its `SLAVEOF` to it."""
    stack = make_stack(groups=(G,), replicas=replicas)
    d = make_controller(stack)
    recorder = EventRecorder(stack.sentinel_addrs)
    assert recorder.start()
    with contextlib.ExitStack() as cleanup, readers(stack) as rs:
        cleanup.callback(recorder.stop)
        t0 = time.time()
        stack.kill_node(f"{G}a")
        new = {f"{G}b", f"{G}c"}
        wait_until(lambda: set(stack.routable().get(stack.write_backend(G), [])) & new,
                   FAILOVER_S, "writes on a new master")
        promoted = (set(stack.routable()[stack.write_backend(G)]) & new).pop()
        others = new - {promoted} if replicas == 2 else set()
        # 3-node: through Sentinel's reconfiguration of the other replica (its SLAVEOF closes
        # that replica's connections too), until it serves reads again.
        wait_until(lambda: others <= set(stack.routable().get(stack.read_backend(G), [])),
                   FAILOVER_S, "the other replica serving reads again")
        n = {id(r): len(r.samples) for r in rs}
        wait_until(lambda: all(len(r.samples) > n[id(r)] + 50 for r in rs), 10,
                   "50 more reads each")
    held, fresh = rs
    # A read in flight on the promoted replica at Sentinel's CLIENT KILL is lost whatever
    # HAProxy does (its connection is closed under it; no other node can answer it in time):
    # at most that one, every other read of the new-connection reader answered.
    cut = cut_by_the_promotion(fresh, t0, promoted_at(stack, promoted))
    assert len(cut) <= 1, cut
    assert [f for f in failed_reads(fresh, t0) if f not in cut] == []
    assert len(failed_reads(held, t0)) <= 1, failed_reads(held, t0)
    # The promoted replica kept its read server through the promotion (out, if at all, only
    # after the writes moved to it: when the failover ends, or a replica follows it); the
    # other replica took no new reads until it followed the new master.
    outs = d.events("server_state_changed", backend=stack.read_backend(G), server=promoted,
                    to="maint")
    changed_at = ts_of(d.events("master_changed")[0]) or 0.0
    assert all((ts_of(o) or 0.0) > changed_at for o in outs), outs
    for other in others:
        addr = str(stack.nodes[other].addr)
        paused = d.events("replica_paused", replica=addr)
        assert paused, d.tail()
        sent = [m.t for m in recorder.snapshot() if m.kind == "+slave-reconf-sent"
                and f"{addr} " in m.text and m.t >= t0]
        assert sent, "no +slave-reconf-sent for the other replica"
        back = [ts_of(ln) or 0.0 for ln in d.events(
            "server_state_changed", backend=stack.read_backend(G), server=other, to="ready")]
        paused_at = ts_of(paused[0]) or 0.0
        assert all(t > sent[0] for t in back if t > paused_at), (back, sent, d.tail())


@pytest.mark.parametrize("replicas", [1, 2], ids=["2-node", "3-node"])
def test_replica_sigkill_costs_new_readers_nothing(
    make_stack: StackFactory, make_controller: ControllerFactory, replicas: int
) -> None:
    """A replica that dies is taken out by HAProxy at the first failed connection and that
    connection is redispatched (to the other replica, or the master as backup): the
    new-connection reader loses no read but the one in flight, before Sentinel even notices."""
    stack = make_stack(groups=(G,), replicas=replicas)
    make_controller(stack)
    with readers(stack) as rs:
        t0 = time.time()
        stack.kill_node(f"{G}b")
        dead = time.time()  # a read may complete on b between t0 and the SIGKILL landing
        n = len(rs[1].samples)
        wait_until(lambda: len(rs[1].samples) > n + 100, 10, "100 more reads")
        # One read may have been in flight on the dying node (EOF mid-reply); after that,
        # every new connection is served. The held connection likewise: one error at most.
        for r in rs:
            assert len(failed_reads(r, t0)) <= 1, failed_reads(r, t0)
        served = {s.node for s in rs[1].samples if s.t >= dead and s.ok}
        assert str(stack.nodes[f"{G}b"].addr) not in served


class ValueReader(Reader):
    """The lab's reader, counting only the value itself as a good read (nil, LOADING: not)."""

    def accepted(self, reply: object) -> bool:
        return reply == "v"


def test_a_restarted_replica_serves_no_read_before_it_has_resynced(
    make_stack: StackFactory, make_controller: ControllerFactory
) -> None:
    """A replica SIGKILLed and restarted without its data (a new pod, a lost volume) must
    resync in full: until its link is up it serves an empty dataset (here for 2 s: the master's
    `repl-diskless-sync-delay`, 5 s by Redis's default), then answers LOADING, while every
    Sentinel still shows its link as it was before the crash (a replica's INFO is polled every
    10 s). The controller asks the node itself before it serves reads again: every read of
    the port returns the value (the master serves them meanwhile, as the fallback), and the
    replica serves reads again once it has resynced."""
    stack = make_stack(groups=(G,), replicas=1)
    controller = make_controller(stack)
    master = stack.nodes[f"{G}a"].addr
    with RespConn(master, 5.0) as c:
        c.pipeline(("SET", "k", "v"), ("CONFIG", "SET", "repl-diskless-sync-delay", "2"))
    wait_until(lambda: stack.redis_command(f"{G}b", "GET", "k") == "v", 30,
               "the replica to have the data")
    stop = threading.Event()
    probe = ValueReader(stack.read_frontend(G), "k", stop, interval_s=0.002,
                        reconnect_each=True)
    backend, server = stack.read_backend(G), f"{G}b"
    replica = str(stack.nodes[server].addr)
    mark = controller.mark()
    probe.start()
    try:
        stack.kill_node(server)
        wait_until(lambda: not ready(stack, backend, server), 10, "the dead replica out")
        wait_until(lambda: controller.events("replica_lost", since=mark), 10, "replica_lost")
        # Comes back without its data (a new pod, a lost volume): a full resync.
        (stack.log_path(server).parent / "dump.rdb").unlink(missing_ok=True)
        restarted = time.time()
        stack.start_node(server)
        wait_until(lambda: ready(stack, backend, server), 60, "the replica to serve reads again")
        back = time.time()
        wait_until(lambda: [r for r in probe.samples if r.t >= back and r.node == replica], 10,
                   "a read served by the resynced replica")
    finally:
        stop.set()
        probe.join(5)
    after = [r for r in probe.samples if r.t >= restarted]
    wrong = [(r.t, r.node, r.error) for r in after if not r.ok]
    assert not wrong, f"{len(wrong)} of {len(after)} reads after the restart: {wrong[:5]}"
    assert any(r.node == replica for r in after if r.t >= back and r.ok), \
        "the resynced replica served no read"
    assert controller.events("replica_not_ready", since=mark, replica=replica), \
        "the replica was never held back"


def promotion_marks(rec: EventRecorder, since: float) -> list[Mark]:
    return [m for m in rec.snapshot() if m.kind == "+promoted-slave" and m.t >= since
            and event_is_for(m, G)]


def test_early_promotion_routes_writes_before_promoted_slave(
    stack: LocalStack, controller: ControllerDaemon
) -> None:
    """After a master SIGKILL the controller makes the promoted replica the write server as
    soon as it answers ROLE master, before the leader publishes +promoted-slave, with the old
    master fenced; no acknowledged write is lost.

    The leader's own INFO poll can land within a few ms of the promotion and beat the
    controller's ROLE poll (a few percent of runs): then the failover is repeated once."""
    recorder = EventRecorder(stack.sentinel_addrs)
    assert recorder.start()
    stop = threading.Event()
    writer = Writer(stack.write_frontend(G), "w", 0, stop, interval_s=0.002)
    writer.start()
    try:
        for attempt, (old, new) in enumerate(((f"{G}a", f"{G}b"), (f"{G}b", f"{G}a"))):
            mark = controller.mark()
            t0 = time.time()
            stack.kill_node(old)
            ev = controller.wait_event("master_changed", FAILOVER_S, since=mark, group=G)
            promoted = wait_until(partial(promotion_marks, recorder, t0), FAILOVER_S,
                                  "+promoted-slave")
            ready = controller.events("server_state_changed", since=mark,
                                      backend=stack.write_backend(G), server=new, to="ready")
            assert ready and ev["to"] == str(stack.nodes[new].addr)
            if ev["early"]:
                assert controller.events("promoted_replica_is_master", since=mark, group=G)
                ts = ts_of(ready[0])
                assert ts is not None and ts < promoted[0].t, "ready only after +promoted-slave"
                break
            assert attempt == 0, "Sentinel confirmed before the ROLE poll twice in a row"
            # Bring the old master back as a replica for the second attempt.
            stack.start_node(old)
            wait_state(stack, {G: new}, timeout_s=60)
    finally:
        stop.set()
        writer.join(5)
        recorder.stop()
    acked = writer.acked()
    final = stack.nodes[new].addr
    kept = read_back(final, [w.key for w in acked])
    lost = [w.key for w in acked if kept.get(w.key) != str(w.seq)]
    assert not lost, f"{len(lost)} acknowledged writes lost"


def test_aborted_promotion_is_fenced_and_never_routed(
    stack: LocalStack, controller: ControllerDaemon
) -> None:
    """The replica the leader selects is SIGSTOPped at +selected-slave: it never answers ROLE,
    the failover times out, and meanwhile no server takes writes; the selected replica is
    never ready in the write backend until Sentinel really elects a master."""
    recorder = EventRecorder(stack.sentinel_addrs)
    paused: list[str] = []

    def pause_selected(m: Mark) -> None:
        if m.kind == "+selected-slave" and not paused and event_is_for(m, G):
            paused.append(f"{G}b")
            stack.pause_node(f"{G}b")

    recorder.listeners.append(pause_selected)
    assert recorder.start()
    poller = StatePoller(stack).start()
    write = stack.write_backend(G)
    try:
        mark = controller.mark()
        stack.kill_node(f"{G}a")
        wait_until(lambda: paused, FAILOVER_S, "+selected-slave (redis1b paused)")
        wait_until(
            lambda: [m for m in recorder.snapshot() if m.kind.startswith("-failover-abort")],
            40, "the leader to abort the failover (failover-timeout)")
        poller.stop()  # before the node is resumed: from then on Sentinel may elect it
        seen = {s.state[write][f"{G}b"] for s in poller.samples}
        assert seen == {"maint"}, "the selected replica took writes before it was elected"
        assert "ready" not in poller.samples[-1].state[write].values(), "not fenced after abort"
        assert not controller.events("server_state_changed", since=mark, backend=write,
                                     to="ready")
    finally:
        poller.stop()
        if paused:
            stack.resume_node(f"{G}b")
        recorder.stop()


def test_failover_leader_lost_mid_failover_loses_no_acknowledged_write(
    stack: LocalStack, controller: ControllerDaemon
) -> None:
    """A double fault: the master SIGKILLed, then the Sentinel leading its failover SIGKILLed
    the moment it sends SLAVEOF NO ONE (it never tells the others). The remaining Sentinels
    elect again after the failover timeout; the controller routes writes only where no
    acknowledged write is lost, and ends on the master the Sentinels name."""
    setup = Setup("controller", stack, controller)
    fault = LeaderLoss(setup)
    rec = run_measured(setup, spec_for(setup, "leader"), None, fault)
    report = summarize(rec)
    assert fault.killed is not None, "no failover leader was seen sending SLAVEOF NO ONE"
    assert report.failed_over and report.acked_checked > 0
    assert report.acked_lost == 0, f"{report.acked_lost} acknowledged writes lost"


def test_a_reader_process_streams_its_reads_back_and_exits_on_stop(stack: LocalStack) -> None:
    """The drill's reader in a process of its own: its reads (with the node that answered) come
    back while it runs, a node that is killed shows as failed reads, and on stop it
    hands over the rest and its process is gone."""
    node = stack.master_of(G)
    stop = threading.Event()
    rp = ReaderProcess(node.addr, "k", stop, interval_s=0.005, reader_id=7)
    rp.start()
    try:
        assert rp.ready.wait(ReaderProcess.START_S), rp.error
        wait_until(lambda: sum(s.ok for s in rp.samples) >= 20, 10, "20 reads back")
        assert {s.node for s in rp.samples if s.ok} == {str(node.addr)}
        assert {s.reader for s in rp.samples} == {7}
        stack.kill_node(node.name)
        wait_until(lambda: any(not s.ok for s in rp.samples), 10, "a failed read")
    finally:
        stop.set()
        rp.join(15)
    assert not rp.is_alive() and not rp.error, rp.error
    assert rp.pid is not None and not Path(f"/proc/{rp.pid}").exists()


def test_a_reader_process_whose_drill_is_gone_stops_quietly() -> None:
    """A reader process whose drill went away (its end of the pipe closed, e.g. killed) stops
    on its own with exit code 0, instead of reading for ever or dying with a traceback."""
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    addr = Address("127.0.0.1", free_port(["127.0.0.1"]))  # nothing listens: reads fail fast
    proc = ctx.Process(target=_reader_child, args=(there, addr, "k", 0.005, 0.2, True, 0))
    proc.start()
    there.close()
    try:
        assert here.poll(ReaderProcess.START_S) and here.recv() == []  # it runs
        here.close()
        proc.join(ReaderProcess.START_S)
        assert proc.exitcode == 0
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def test_a_crashed_haproxy_is_seen_at_once_and_set_right_when_it_is_back(
    make_stack: StackFactory, make_controller: ControllerFactory
) -> None:
    """HAProxy SIGKILLed, then started again from its config (every server `disabled`, and
    no server-state file kept: it routes nothing until told). With the periodic probe at a
    minute and no write lease (nothing else would ask it), the controller's idle watch
    session ends with the crash
    (`haproxy_unreachable`), it sees the new HAProxy listening and gives it the state
    (`haproxy_restarted`): the master behind the write port, the replica behind the read
    port."""
    stack = make_stack(groups=(G,), replicas=1)
    d = make_controller(stack, "--haproxy-poll-interval-s", "60", "--no-write-lease",
                        "--haproxy-state-file", "")
    mark = d.mark()
    stack.kill_haproxy()
    d.wait_event("haproxy_unreachable", since=mark, timeout_s=10)
    stack.start_haproxy()
    wait_state(stack, {G: f"{G}a"}, read_ready={G: {f"{G}b"}}, timeout_s=10,
               what="the state back after the restart")
    d.wait_event("haproxy_restarted", since=mark, timeout_s=10)
