"""controller.localstack: the reference layout as local processes (real redis/sentinel/haproxy)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from itest_support import procs_under

from lab.localstack import (
    HAPROXY_CLASSIC_CONFIG,
    Layout,
    LocalStack,
    PortInUseError,
)
from lab.procs import ProcessError

pytestmark = pytest.mark.integration


def assert_all_dead(pids: list[int]) -> None:
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def servers_state(stack: LocalStack) -> list[list[str]]:
    reply = stack.haproxy_command("show servers state")
    return [line.split() for line in reply.splitlines()[2:] if line.strip()]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    yield s
    s.close()


def test_start_reports_initial_masters_maint_servers_and_stop_leaves_nothing(
    tmp_path: Path,
) -> None:
    """A started stack has node a as each group's master, all servers in maint; stop() kills all."""
    layout = Layout.for_tests()
    stack = LocalStack(tmp_path, layout)
    t0 = time.monotonic()
    stack.start()
    try:
        print(f"stack started in {time.monotonic() - t0:.2f} s")
        assert len(stack.pids()) == 6 + 3 + 1
        for i in range(layout.sentinels):
            for group in layout.groups:
                reply = stack.sentinel_command(i, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", group)
                master = stack.nodes[group + "a"]
                assert reply == [master.host, str(layout.redis_port)]
        rows = servers_state(stack)
        by_backend: dict[str, dict[str, list[str]]] = {}
        for row in rows:
            by_backend.setdefault(row[1], {})[row[3]] = row
        assert set(by_backend) == {
            f"{g}_{k}" for g in layout.groups for k in ("master", "replicas")
        }
        for backend, servers in by_backend.items():
            group = backend.rsplit("_", 1)[0]
            nodes = {group + "a", group + "b"}
            fallback = {n + "-fallback" for n in nodes} if backend.endswith("_replicas") else set()
            assert set(servers) == nodes | fallback
            for name, row in servers.items():
                node = stack.nodes[name.removesuffix("-fallback")]
                assert row[4] == node.host and row[4].startswith("127.0.0.")
                assert int(row[18]) == layout.redis_port  # srv_port
                assert int(row[6]) & 0x01 and int(row[6]) & 0x04  # FMAINT | CMAINT (disabled)
        assert stack.role("redis2a") == "master" and stack.role("redis2b") == "slave"
        pids = stack.pids()
    finally:
        stack.stop()
    assert stack.pids() == []
    assert_all_dead(pids)
    assert procs_under(tmp_path) == []
    stack.stop()  # idempotent


def test_port_taken_before_start_raises_clear_error_and_starts_nothing(
    tmp_path: Path, listener: socket.socket
) -> None:
    """start() names the taken port and address and leaves no process behind."""
    layout = Layout.for_tests(groups=("redis1",))
    listener.bind(("127.0.0.3", layout.redis_port))
    listener.listen(1)
    stack = LocalStack(tmp_path, layout)
    with pytest.raises(PortInUseError, match=rf"port {layout.redis_port} on 127\.0\.0\.3 "):
        stack.start()
    assert stack.pids() == []
    assert procs_under(tmp_path) == []


def test_failure_half_way_stops_what_was_started(
    tmp_path: Path, listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When HAProxy cannot bind after nodes and sentinels started, start() raises and kills them."""
    layout = Layout.for_tests(groups=("redis1",))
    listener.bind(("127.0.0.1", layout.stats_port))
    listener.listen(1)
    monkeypatch.setattr(LocalStack, "check_ports", lambda self: None)
    stack = LocalStack(tmp_path, layout)
    started: list[int] = []
    real_start_haproxy = LocalStack._start_haproxy

    def spy(self: LocalStack, deadline: float) -> None:
        started.extend(self.pids())
        real_start_haproxy(self, deadline)

    monkeypatch.setattr(LocalStack, "_start_haproxy", spy)
    with pytest.raises(ProcessError, match="haproxy exited"):
        stack.start(timeout_s=20)
    assert len(started) == 2 + 3
    assert stack.pids() == []
    assert_all_dead(started)
    assert procs_under(tmp_path) == []


def test_restart_node_keeps_original_role_and_haproxy_restart_changes_pid(tmp_path: Path) -> None:
    """A killed node restarts in its original role; restart_haproxy() gives a new answering PID."""
    layout = Layout.for_tests(groups=("redis1",))
    with LocalStack(tmp_path, layout) as stack:
        old = stack.node_pid("redis1b")
        stack.kill_node("redis1b")
        assert stack.node_pid("redis1b") is None
        assert_all_dead([old] if old else [])
        stack.start_node("redis1b")
        assert stack.role("redis1b") == "slave"
        stack.kill_node("redis1a")
        stack.start_node("redis1a")
        assert stack.role("redis1a") == "master"
        old_hp = stack.haproxy_pid
        stack.restart_haproxy()
        assert stack.haproxy_pid not in (None, old_hp)
        assert f"Pid: {stack.haproxy_pid}\n" in stack.haproxy_command("show info")
        stack.pause_sentinel(0)  # stop() must also end a SIGSTOPped process
        pids = stack.pids()
    assert_all_dead(pids)
    assert procs_under(tmp_path) == []


def test_classic_layout_routes_by_role_check(tmp_path: Path) -> None:
    """With the classic config, HAProxy's role checks mark node a UP for writes and b for reads."""
    layout = Layout.for_tests(groups=("redis1",), haproxy_config=HAPROXY_CLASSIC_CONFIG)
    want = {
        ("redis1_master", "redis1a"): "UP",
        ("redis1_master", "redis1b"): "DOWN",
        ("redis1_replicas", "redis1a"): "DOWN",
        ("redis1_replicas", "redis1b"): "UP",
    }
    with LocalStack(tmp_path, layout) as stack:
        deadline = time.monotonic() + 10
        while True:
            lines = stack.haproxy_command("show stat").splitlines()
            header = lines[0].lstrip("# ").split(",")
            rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
            got = {(r["pxname"], r["svname"]): r["status"] for r in rows}
            got = {k: v for k, v in got.items() if k in want}
            if got == want:
                break
            assert time.monotonic() < deadline, got
            time.sleep(0.1)
