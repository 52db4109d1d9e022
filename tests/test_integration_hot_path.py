"""The hot path on real processes (issue 12): a failover followed while one Sentinel and one
of two HAProxy are hung (SIGSTOP), a hung HAProxy caught up when it is back, failovers of two
groups in one burst. Every bound is a deadline, never a timed assertion (the latencies are
measured by bench/hot_path.py)."""

from __future__ import annotations

import signal

import pytest
from itest_support import (
    FAILOVER_S,
    ControllerFactory,
    StackFactory,
    extra_haproxy,
    wait_ready,
    wait_state,
)

from controller.haproxy import HAProxyClient
from lab.localstack import LocalStack

pytestmark = pytest.mark.integration

CAUGHT_UP_S = 5.0  # deadline for a hung HAProxy to be brought up to date once it is back


def test_failover_followed_with_a_sentinel_and_one_of_two_haproxy_hung(
    stack: LocalStack, make_controller: ControllerFactory
) -> None:
    """With the third Sentinel and the first HAProxy SIGSTOPped, a master SIGKILL still puts
    the new master in the second HAProxy (its worker waits for nobody); once the first HAProxy
    is resumed it is caught up."""
    with extra_haproxy(stack) as second:
        ctl = make_controller(stack, "--haproxy-socket", second.client.target)
        first = HAProxyClient(str(stack.haproxy_socket))
        wait_ready(second.client, "redis1_master", {"redis1a"}, 20)
        mark = ctl.mark()
        stack.pause_haproxy()
        stack.pause_sentinel(2)
        try:
            stack.kill_node("redis1a")
            wait_ready(second.client, "redis1_master", {"redis1b"}, FAILOVER_S)
            ctl.wait_event("server_state_changed", since=mark, haproxy=second.client.target,
                           backend="redis1_master", server="redis1b", to="ready")
            assert not ctl.events("server_state_changed", since=mark,
                                  haproxy=str(stack.haproxy_socket))
        finally:
            stack.resume_haproxy()
            stack.resume_sentinel(2)
        wait_ready(first, "redis1_master", {"redis1b"}, CAUGHT_UP_S)
        ctl.wait_event("haproxy_reachable", since=mark, haproxy=str(stack.haproxy_socket))


def test_hung_haproxy_that_comes_back_is_caught_up(
    stack: LocalStack, make_controller: ControllerFactory
) -> None:
    """A second HAProxy hung through a failover (SENTINEL FAILOVER) is reported unreachable,
    the first follows meanwhile, and once resumed the second gets the new master without
    waiting for the next periodic pass."""
    with extra_haproxy(stack) as second:
        ctl = make_controller(stack, "--haproxy-socket", second.client.target,
                              resync_interval_s=60.0)
        wait_ready(second.client, "redis1_master", {"redis1a"}, 20)
        mark = ctl.mark()
        second.proc.send_signal(signal.SIGSTOP)
        try:
            ctl.wait_event("haproxy_unreachable", since=mark, haproxy=second.client.target)
            assert stack.sentinel_command(0, "SENTINEL", "FAILOVER", "redis1") == "OK"
            wait_ready(HAProxyClient(str(stack.haproxy_socket)), "redis1_master", {"redis1b"},
                       FAILOVER_S)
        finally:
            second.proc.send_signal(signal.SIGCONT)
        wait_ready(second.client, "redis1_master", {"redis1b"}, CAUGHT_UP_S)
        ctl.wait_event("haproxy_reachable", since=mark, haproxy=second.client.target)


def test_failovers_of_two_groups_in_one_burst_both_land(
    make_stack: StackFactory, make_controller: ControllerFactory
) -> None:
    """Both masters of a two-group stack killed back to back (one host with two masters
    dies): both groups' new masters take the writes, each announced once."""
    stack = make_stack(groups=("redis1", "redis2"))
    ctl = make_controller(stack)
    mark = ctl.mark()
    stack.kill_node("redis1a")
    stack.kill_node("redis2a")
    wait_state(stack, {"redis1": "redis1b", "redis2": "redis2b"},
               read_ready={"redis1": set(), "redis2": set()}, timeout_s=FAILOVER_S)
    for g in ("redis1", "redis2"):
        assert len(ctl.events("master_changed", since=mark, group=g)) == 1
