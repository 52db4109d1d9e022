"""The controller on real processes: failovers, returning masters, held sessions, restarts.

Each test runs a LocalStack (real redis-server, redis-sentinel, haproxy) and the controller
as a subprocess (`python -m controller run`, JSON log checked at teardown by conftest).
Waits are bounded polls of conditions; no test asserts a duration.
"""

from __future__ import annotations

import threading
import time

import pytest
from itest_support import (
    FAILOVER_S,
    ControllerFactory,
    StackFactory,
    StatePoller,
    assert_cut,
    connect_write,
    fail_over_holding,
    held_write,
    list_values,
    node_behind_write,
    node_host,
    servers_state,
    wait_backend,
    wait_lease,
    wait_sentinels_agree,
    wait_state,
)

from lab.daemon import ControllerDaemon
from lab.localstack import LocalStack
from lab.probes import Writer, read_back
from lab.resp import RespConn
from lab.wait import wait_until

pytestmark = pytest.mark.integration


def _sentinel(stack: LocalStack, i: int) -> str:
    return str(stack.sentinel_addrs[i])


def test_master_sigkill_writes_reach_new_master_other_groups_untouched(
    make_stack: StackFactory, make_controller: ControllerFactory
) -> None:
    """After a master is SIGKILLed, writes through its write frontend reach the promoted replica,
    the old master is maint and the other groups are not touched.
    """
    stack = make_stack(groups=("redis1", "redis2", "redis3"))
    ctl = make_controller(stack)
    before = servers_state(stack)
    mark = ctl.mark()
    stack.kill_node("redis2a")
    wait_state(stack, {"redis1": "redis1a", "redis2": "redis2b", "redis3": "redis3a"},
               read_ready={"redis2": set()}, timeout_s=FAILOVER_S)
    with connect_write(stack, "redis2") as c:
        assert node_host(c) == stack.nodes["redis2b"].host
        assert "role:master" in str(c.command("INFO", "replication"))
        assert c.command("SET", "after-failover", "1") == "OK"
    after = servers_state(stack)
    assert after["redis2_master"]["redis2a"] == "maint"
    for g in ("redis1", "redis3"):
        for kind in ("master", "replicas"):
            assert after[f"{g}_{kind}"] == before[f"{g}_{kind}"]
    changed = ctl.events("server_state_changed", since=mark)
    assert changed, "the controller logged no state change"
    assert {e["backend"] for e in changed} <= {"redis2_master", "redis2_replicas"}
    ctl.wait_event("master_changed", since=mark, group="redis2")


def test_returning_old_master_never_gets_writes(
    stack: LocalStack, controller: ControllerDaemon
) -> None:
    """An old master restarted with its old config (a master for ~10 s) gets no write through
    HAProxy and no acknowledged write is lost.
    """
    stack.kill_node("redis1a")
    wait_state(stack, {"redis1": "redis1b"}, read_ready={"redis1": set()}, timeout_s=FAILOVER_S)
    mark = controller.mark()
    poller = StatePoller(stack, roles_of=["redis1a"]).start()
    stop = threading.Event()
    writer = Writer(stack.write_frontend("redis1"), "acked", 0, stop, interval_s=0.001)
    writer.start()
    try:
        wait_until(lambda: len(writer.acked()) >= 50, 20, "50 writes acknowledged after failover")
        t_restart = time.time()
        stack.start_node("redis1a")
        # Evidence that the dangerous window exists: it answers as a master.
        assert stack.role("redis1a") == "master"
        wait_until(lambda: stack.role("redis1a") == "slave", 40,
                   "Sentinel to convert the returning old master (+convert-to-slave)")
        t_converted = time.time()
        wait_state(stack, {"redis1": "redis1b"}, timeout_s=30,
                   what="old master ready in the read backend once it replicates")
        n_before = len(writer.acked())
        wait_until(lambda: len(writer.acked()) >= n_before + 20, 20, "20 more writes")
    finally:
        stop.set()
        writer.join(5)
        poller.stop()
    acked = writer.acked()
    nodes = {stack.node_named(w.node) if w.node else "?" for w in acked}
    in_window = [w for w in acked if t_restart <= w.t <= t_converted]
    errors = len(writer.samples) - len(acked)
    print(f"acks={len(acked)} errors={errors} in window={len(in_window)} "
          f"samples={len(poller.samples)} window={t_converted - t_restart:.1f}s")
    assert nodes == {"redis1b"}, f"writes acknowledged by {nodes}"
    assert in_window, "no write was acknowledged while the old master was back as a master"
    kept = read_back(stack.nodes["redis1b"].addr, [w.key for w in acked])
    lost = [w.key for w in acked if kept.get(w.key) != str(w.seq)]
    assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:10]}"
    as_master = [x for x in poller.samples if x.roles["redis1a"] == "master"]
    assert as_master, "the poller never saw the old master answer as a master"
    assert poller.seen("redis1_master", "redis1a") == {"maint"}
    # Nor is it a reader while it reports role master (a read would see its stale data).
    assert {x.state["redis1_replicas"]["redis1a"] for x in as_master} == {"maint"}
    assert not controller.events("server_state_changed", since=mark, backend="redis1_master",
                                 server="redis1a", to="ready")


def test_connection_held_through_failover_is_cut(
    stack: LocalStack, controller: ControllerDaemon
) -> None:
    """A connection held through the write frontend across a failover is closed instead of reaching
    the old master when it resumes, and no acknowledged write is lost.
    """
    held = held_write(stack)
    try:
        mark = controller.mark()
        fail_over_holding(stack, held, served="held connection still served by the old master")
    finally:
        held.close()
    with connect_write(stack, "redis1") as c:
        assert node_host(c) == stack.nodes["redis1b"].host
        assert c.command("RPUSH", "acked", 3) == 2
    assert list_values(stack, "redis1b", "acked") == {1, 3}
    controller.wait_event("server_state_changed", since=mark, backend="redis1_master",
                          server="redis1a", to="sessions-closed")
    # Cutting the sessions of a fenced server is part of the fence, not a hand edit.
    assert controller.events("drift_corrected", since=mark) == []


def test_replica_killed_leaves_read_backend_and_returns(
    stack: LocalStack, controller: ControllerDaemon
) -> None:
    """A killed replica goes out of the read backend and is ready again once it is restarted."""
    mark = controller.mark()
    stack.kill_node("redis1b")
    wait_state(stack, {"redis1": "redis1a"}, read_ready={"redis1": set()}, timeout_s=FAILOVER_S)
    controller.wait_event("replica_lost", since=mark, group="redis1")
    stack.start_node("redis1b")
    wait_state(stack, {"redis1": "redis1a"}, timeout_s=FAILOVER_S)
    controller.wait_event("replica_healthy", since=mark, group="redis1")
    with connect_write(stack, "redis1") as c:
        assert c.command("SET", "k", "v") == "OK"
    with RespConn(stack.read_frontend("redis1")) as r:
        assert node_host(r) == stack.nodes["redis1b"].host


def test_haproxy_restart_state_restored(
    stack: LocalStack, make_controller: ControllerFactory
) -> None:
    """After an HAProxy restart (every server back to `disabled`: no server-state file kept)
    the controller restores the state and writes work.
    """
    controller = make_controller(stack, "--haproxy-state-file", "")
    old_pid = stack.haproxy_pid
    mark = controller.mark()
    stack.restart_haproxy()
    assert stack.haproxy_pid != old_pid
    wait_state(stack, {"redis1": "redis1a"}, timeout_s=20, what="state restored after restart")
    controller.wait_event("haproxy_restarted", since=mark)
    wait_lease(stack)  # given after every group is synced
    with connect_write(stack, "redis1") as c:
        assert node_host(c) == stack.nodes["redis1a"].host
        assert c.command("SET", "after-restart", "1") == "OK"


def test_failover_followed_with_first_sentinel_dead(
    stack: LocalStack, controller: ControllerDaemon
) -> None:
    """With the first configured Sentinel killed, a master failover is still followed."""
    mark = controller.mark()
    stack.kill_sentinel(0)
    controller.wait_event("sentinel_disconnected", since=mark, sentinel=_sentinel(stack, 0))
    stack.kill_node("redis1a")
    wait_state(stack, {"redis1": "redis1b"}, read_ready={"redis1": set()}, timeout_s=FAILOVER_S)
    assert node_behind_write(stack, "redis1") == "redis1b"
    controller.wait_event("master_changed", since=mark, group="redis1")


def test_failover_followed_with_first_sentinel_hung(
    stack: LocalStack, controller: ControllerDaemon
) -> None:
    """With the first configured Sentinel hung (SIGSTOP), the watcher's own ping notices it and a
    failover is still followed.
    """
    mark = controller.mark()
    stack.pause_sentinel(0)
    try:
        ev = controller.wait_event("sentinel_disconnected", since=mark,
                                   sentinel=_sentinel(stack, 0))
        assert "pong" in ev["error"], ev
        stack.kill_node("redis1a")
        wait_state(stack, {"redis1": "redis1b"}, read_ready={"redis1": set()},
                   timeout_s=FAILOVER_S)
        assert node_behind_write(stack, "redis1") == "redis1b"
        controller.wait_event("master_changed", since=mark, group="redis1")
        back = controller.mark()
    finally:
        stack.resume_sentinel(0)
    controller.wait_event("sentinel_connected", since=back, sentinel=_sentinel(stack, 0))
    assert node_behind_write(stack, "redis1") == "redis1b"


@pytest.mark.parametrize(
    ("edit", "backend", "server", "to"),
    [
        ("set server redis1_master/redis1a state maint", "redis1_master", "redis1a", "ready"),
        ("set server redis1_master/redis1b state ready", "redis1_master", "redis1b", "maint"),
        ("set server redis1_replicas/redis1b state maint", "redis1_replicas", "redis1b", "ready"),
    ],
    ids=["master-maint", "replica-write-ready", "replica-read-maint"],
)
def test_hand_edit_is_undone(
    stack: LocalStack, controller: ControllerDaemon, edit: str, backend: str, server: str, to: str
) -> None:
    """A hand edit over the admin socket is undone by the controller's next pass."""
    mark = controller.mark()
    assert stack.haproxy_command(edit) == "\n"
    ev = controller.wait_event("server_state_changed", timeout_s=15, since=mark,
                               backend=backend, server=server, to=to)
    wait_state(stack, {"redis1": "redis1a"}, timeout_s=15)
    assert ev["reason"]
    assert node_behind_write(stack, "redis1") == "redis1a"


def test_controller_restarted_mid_failover_converges_and_cuts_old_sessions(
    stack: LocalStack, controller: ControllerDaemon
) -> None:
    """A controller that was down during a failover converges when it starts again and cuts the
    sessions still held to the old master.
    """
    held = held_write(stack)
    try:
        controller.stop()
        stack.pause_node("redis1a")
        try:
            wait_sentinels_agree(stack, "redis1", "redis1b", FAILOVER_S)
        finally:
            stack.resume_node("redis1a")
        # Nobody drove HAProxy: the held session to the (resumed) old master is still live.
        assert servers_state(stack)["redis1_master"] == {"redis1a": "ready", "redis1b": "maint"}
        assert held.command("PING") == "PONG"
        mark = controller.mark()
        controller.start()
        wait_backend(stack, "redis1_master", {"redis1a": "maint", "redis1b": "ready"},
                     timeout_s=30)
        assert_cut(held, "RPUSH", "acked", 2,
                   served="held connection to the old master still served")
    finally:
        held.close()
    controller.wait_event("server_state_changed", since=mark, backend="redis1_master",
                          server="redis1a", to="sessions-closed")
    wait_lease(stack)  # a restarted controller gives it after its first full pass
    assert node_behind_write(stack, "redis1") == "redis1b"
    assert 1 in list_values(stack, "redis1b", "acked")
