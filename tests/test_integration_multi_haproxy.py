"""Several HAProxy instances (`--haproxy-socket` repeated), and a master-worker reload.

A second real haproxy runs the same shipped config with its own frontend ports and admin
socket, in front of the same Redis nodes, as a second HAProxy replica of a deployment would.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from itest_support import ControllerFactory, ExtraHAProxy, extra_haproxy, wait_ready

from controller.haproxy import HAProxyClient
from lab.localstack import LocalStack
from lab.wait import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def second_haproxy(stack: LocalStack) -> Iterator[HAProxyClient]:
    """A second haproxy on the stack's Redis nodes, stopped by PID at teardown."""
    with extra_haproxy(stack) as extra:
        yield extra.client


@pytest.fixture
def master_worker_haproxy(stack: LocalStack) -> Iterator[ExtraHAProxy]:
    """A second haproxy in master-worker mode (`-W`, as the official image runs it)."""
    with extra_haproxy(stack, "-W") as extra:
        yield extra


def test_two_haproxies_both_get_the_master_and_both_follow_a_failover(
    stack: LocalStack, make_controller: ControllerFactory, second_haproxy: HAProxyClient
) -> None:
    """With two sockets, both HAProxy get the master ready and both switch on a failover."""
    make_controller(stack, "--haproxy-socket", second_haproxy.target)
    first = HAProxyClient(str(stack.haproxy_socket))
    for client in (first, second_haproxy):
        wait_ready(client, "redis1_master", {"redis1a"}, 20)
        wait_ready(client, "redis1_replicas", {"redis1b", "redis1a-fallback"}, 20)
    stack.kill_node("redis1a")
    for client in (first, second_haproxy):
        wait_ready(client, "redis1_master", {"redis1b"}, 30)


def test_master_worker_reload_is_noticed_and_the_state_reapplied(
    stack: LocalStack, make_controller: ControllerFactory, master_worker_haproxy: ExtraHAProxy
) -> None:
    """A master-worker reload (SIGUSR2) starts a worker from the config, every server
    disabled; the controller sees the new worker and applies the state again."""
    client = master_worker_haproxy.client
    make_controller(stack, "--haproxy-socket", client.target)
    wait_ready(client, "redis1_master", {"redis1a"}, 20)
    old_pid = client.info().pid
    master_worker_haproxy.proc.send_signal(signal.SIGUSR2)
    wait_until(lambda: client.info().pid != old_pid, 20, "a new worker after SIGUSR2")
    wait_ready(client, "redis1_master", {"redis1a"}, 20)
    wait_ready(client, "redis1_replicas", {"redis1b", "redis1a-fallback"}, 20)
