"""The server-state file the controller keeps, on real processes: a restarted or reloaded
HAProxy (the shipped config loads the file) starts routing as the controller last told it,
before the controller reaches it and also while no controller runs; writes stay refused until
the controller gives the new HAProxy a lease, after syncing it."""

from __future__ import annotations

from pathlib import Path

import pytest
from itest_support import ControllerFactory, StackFactory, servers_state, wait_state

from lab.localstack import LocalStack
from lab.resp import RespConn, RespError
from lab.wait import wait_until

pytestmark = pytest.mark.integration

W, R = "redis1_master", "redis1_replicas"
STEADY = {W: {"redis1a": "ready", "redis1b": "maint"},
          R: {"redis1a": "maint", "redis1b": "ready", "redis1a-fallback": "ready",
              "redis1b-fallback": "maint"}}


def state_file(stack: LocalStack) -> Path:
    """Where the controller keeps it by default: beside the admin socket."""
    return stack.haproxy_socket.parent / "server-state"


def admin(stack: LocalStack) -> dict[str, dict[str, str]]:
    got = servers_state(stack)
    return {b: got[b] for b in (W, R)}


def read_through(stack: LocalStack) -> str:
    """One GET through the read frontend, on a new connection."""
    with RespConn(stack.read_frontend("redis1"), timeout_s=2.0) as c:
        return str(c.command("GET", "state-file-probe"))


def write_refused(stack: LocalStack) -> bool:
    """HAProxy's lease rule closes a new write connection at once (no lease given yet)."""
    try:
        with RespConn(stack.write_frontend("redis1"), timeout_s=2.0) as c:
            c.command("SET", "state-file-probe", "1")
    except (OSError, RespError):
        return True
    return False


def test_a_haproxy_restarted_while_no_controller_runs_routes_reads_from_the_file(
    stack: LocalStack, make_controller: ControllerFactory,
) -> None:
    """With the controller stopped, a SIGKILLed HAProxy started again has the states the
    controller last applied (reads flow at once) but no lease (writes refused); the
    controller, started again, syncs it and gives the lease (writes flow)."""
    ctl = make_controller(stack)
    wait_until(lambda: state_file(stack).exists(), 10, "the state file written")
    wait_until(lambda: admin(stack) == STEADY, 10, "the steady state applied")
    ctl.stop()
    stack.kill_haproxy()
    stack.start_haproxy()
    assert admin(stack) == STEADY  # from the file: no controller runs
    assert read_through(stack) == "None"
    assert write_refused(stack)
    ctl.start()
    wait_until(lambda: not write_refused(stack), 20, "writes taken again after the lease")


def test_a_master_worker_reload_starts_the_new_worker_from_the_file(
    make_stack: StackFactory, make_controller: ControllerFactory,
) -> None:
    """A reload (SIGUSR2; the new worker starts from the config, which loads the file) routes
    reads at once, also with no controller running, as the old worker did."""
    stack = make_stack(haproxy_master_worker=True)
    ctl = make_controller(stack)
    wait_until(lambda: admin(stack) == STEADY and state_file(stack).exists(), 10,
               "the steady state applied and written")
    ctl.stop()
    old, new = stack.reload_haproxy()
    assert stack.haproxy().info().pid == new != old
    assert admin(stack) == STEADY
    assert read_through(stack) == "None"
    ctl.start()
    wait_state(stack, {"redis1": "redis1a"}, timeout_s=20, what="the controller's state")
    wait_until(lambda: not write_refused(stack), 20, "writes taken after the lease")


def test_a_failover_is_in_the_file_before_a_restart_can_read_it(
    stack: LocalStack, make_controller: ControllerFactory,
) -> None:
    """After a failover the file holds the new master ready and the old one in maint: an
    HAProxy restarted then (controller stopped) routes reads to the new master's side and
    never makes the old master a write server."""
    ctl = make_controller(stack)
    stack.kill_node("redis1a")
    wait_state(stack, {"redis1": "redis1b"}, read_ready={"redis1": set()}, timeout_s=30,
               what="the failover applied")
    ctl.stop()
    applied = admin(stack)
    stack.kill_haproxy()
    stack.start_haproxy()
    got = admin(stack)
    assert got == applied
    assert got[W] == {"redis1a": "maint", "redis1b": "ready"}
    assert got[R]["redis1a"] == "maint"


def test_a_reload_is_seen_at_once_and_writes_resume_within_milliseconds(
    make_stack: StackFactory, make_controller: ControllerFactory,
) -> None:
    """With the probe and the full passes (which read `show info` too) at a minute, a
    master-worker reload (whose old worker keeps the watch's session) is seen through the
    state file the new HAProxy opens at its start: the
    controller logs `haproxy_restarted` for the new worker and gives it the lease, so new
    writes are taken again well before a lease renewal (0.25 s) would have come."""
    stack = make_stack(haproxy_master_worker=True)
    ctl = make_controller(stack, "--haproxy-poll-interval-s", "60", resync_interval_s=60.0)
    mark = ctl.mark()
    old, new = stack.reload_haproxy()
    line = ctl.wait_event("haproxy_restarted", since=mark, timeout_s=5)
    assert line["pid"] == new != old
    wait_until(lambda: not write_refused(stack), 5, "writes taken by the new worker")
