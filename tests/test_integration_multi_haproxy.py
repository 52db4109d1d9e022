"""Several HAProxy instances (`--haproxy-socket` repeated), and a master-worker reload.

A second real haproxy runs the same shipped config with its own frontend ports and admin
socket, in front of the same Redis nodes, as a second HAProxy replica of a deployment would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from itest_support import ControllerFactory

from controller.haproxy import HAProxyClient
from controller.model import AdminState
from lab.localstack import LocalStack, free_port, write_haproxy_config
from lab.procs import ManagedProcess, start_haproxy
from lab.wait import wait_until

pytestmark = pytest.mark.integration


@dataclasses.dataclass
class ExtraHAProxy:
    client: HAProxyClient
    proc: ManagedProcess


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


@contextlib.contextmanager
def extra_haproxy(stack: LocalStack, *flags: str) -> Iterator[ExtraHAProxy]:
    first = free_port(["127.0.0.1"], count=2 * len(stack.layout.groups))
    stats = free_port(["127.0.0.1"], exclude=frozenset(range(first, first + 6)))
    layout = dataclasses.replace(stack.layout, first_frontend_port=first, stats_port=stats)
    workdir = Path(tempfile.mkdtemp(prefix="shx2-"))  # short: unix socket paths are limited
    sock = workdir / "admin.sock"
    cfg = workdir / "haproxy.cfg"
    write_haproxy_config(layout, sock, cfg)
    proc: ManagedProcess | None = None
    try:
        # started and waited for: its admin socket answers (10 s)
        proc = start_haproxy(cfg, sock, workdir, flags, name="haproxy2")
        yield ExtraHAProxy(HAProxyClient(str(sock)), proc)
    finally:
        if proc is not None:
            proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def ready_in(client: HAProxyClient, backend: str) -> set[str]:
    return {
        name
        for name, srv in client.state().backends[backend].items()
        if srv.admin is AdminState.READY
    }


def wait_ready(client: HAProxyClient, backend: str, want: set[str], timeout_s: float) -> None:
    wait_until(lambda: ready_in(client, backend) == want, timeout_s,
               f"{sorted(want)} ready in {backend} of {client.target}")


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
