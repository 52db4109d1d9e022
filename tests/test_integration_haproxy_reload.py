"""The local stack's HAProxy in master-worker mode (`-W`, Layout.haproxy_master_worker): a
reload (SIGUSR2 to the master) and the processes it leaves, as `drill --compare` runs it; a
fence after a reload reaching the old worker's sessions through the master CLI."""

from __future__ import annotations

import pytest
from itest_support import (
    ControllerFactory,
    StackFactory,
    describe,
    fail_over_holding,
    held_write,
    running,
)

from lab.localstack import HAPROXY_CLASSIC_CONFIG
from lab.resp import RespConn
from lab.wait import wait_until

pytestmark = pytest.mark.integration


def test_reload_gives_a_new_worker_and_stop_leaves_no_haproxy_process(
    make_stack: StackFactory,
) -> None:
    """reload_haproxy() makes `show info` name a new worker while the old one keeps serving an
    established connection, and stop() leaves no process of master, old or new worker."""
    # Classic config: its servers route without a controller, so a client connection through
    # the write frontend is established, and it keeps the old worker after the reload.
    stack = make_stack(haproxy_config=HAPROXY_CLASSIC_CONFIG, haproxy_master_worker=True)
    master = stack.haproxy_pid
    assert master is not None
    with RespConn(stack.write_frontend("redis1"), timeout_s=2.0) as held:
        assert held.command("PING") == "PONG"
        old, new = stack.reload_haproxy()
        assert new != old
        assert stack.haproxy().info().pid == new
        assert held.command("PING") == "PONG"  # still served, by the old worker
        assert {master, old, new} <= set(stack.haproxy_pids())
        stack.stop()
    recorded = [master, old, new]
    wait_until(lambda: not any(running(p) for p in recorded), 5.0,
               f"no HAProxy process left of {describe(recorded)}")


def test_kill_haproxy_in_master_worker_mode_kills_master_and_workers(
    make_stack: StackFactory,
) -> None:
    """kill_haproxy() (the `proxy` drill's crash) kills the master and every worker, old ones
    kept by a connection included, and start_haproxy() brings a new master and worker."""
    stack = make_stack(haproxy_config=HAPROXY_CLASSIC_CONFIG, haproxy_master_worker=True)
    with RespConn(stack.write_frontend("redis1"), timeout_s=2.0) as held:
        assert held.command("PING") == "PONG"
        old, new = stack.reload_haproxy()
        before = stack.haproxy_pids()
        assert {old, new} <= set(before)
        stack.kill_haproxy()
        assert not any(running(p) for p in before), describe(before)
    stack.start_haproxy()
    assert stack.haproxy_pid not in before
    assert stack.haproxy().info().pid not in before


def test_fence_after_reload_cuts_the_old_workers_write_session(
    make_stack: StackFactory, make_controller: ControllerFactory
) -> None:
    """A write session that a reload left on the old worker is cut when the controller fences
    its master (through HAProxy's master CLI, `-S master.sock`, found beside the admin socket by
    default): the old master, resumed and not yet converted, gets no write from it."""
    stack = make_stack(haproxy_master_worker=True)
    controller = make_controller(stack)
    held = held_write(stack)
    try:
        old, new = stack.reload_haproxy()
        assert held.command("PING") == "PONG"  # kept by the old worker
        mark = controller.mark()
        fail_over_holding(
            stack, held, served="the old worker's session still reached the old master",
            while_paused=lambda: controller.wait_event("old_worker_sessions_closed",
                                                       since=mark, pid=old))
    finally:
        held.close()
    assert stack.haproxy().info().pid == new
