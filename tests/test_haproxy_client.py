"""controller.haproxy.HAProxyClient against a real haproxy process (Debian's 2.6).

A small config: frontend g_write -> backend g_master (n1 ready, n2 config-disabled), an admin
socket and an operator-level socket. A Python listener stands in for n1's Redis so a session
can be held open through HAProxy.
"""

from __future__ import annotations

import re
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.haproxy import HAProxyClient, HAProxyError
from controller.model import AdminState, Command
from lab.localstack import free_port
from lab.procs import ManagedProcess, start_haproxy
from lab.wait import wait_until

pytestmark = pytest.mark.integration

CONFIG = """\
global
    stats socket {sock} mode 600 level admin
    stats socket {op_sock} mode 600 level operator

defaults
    mode tcp
    timeout client 30s
    timeout server 30s
    timeout connect 1s

frontend g_write
    bind 127.0.0.1:{fe_port}
    default_backend g_master

backend g_master
    balance first
    server n1 127.0.0.2:{port}
    server n2 127.0.0.3:{port} disabled
"""


@dataclass
class HAProxy:
    proc: ManagedProcess
    sock: Path
    op_sock: Path
    fe_port: int
    listener: socket.socket


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[HAProxy]:
    """A running haproxy on its own config; stopped by PID at teardown."""
    port = free_port(["127.0.0.2"])
    fe_port = free_port(["127.0.0.1"], exclude=frozenset({port}))
    sock, op_sock = tmp_path / "admin.sock", tmp_path / "operator.sock"
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(CONFIG.format(sock=sock, op_sock=op_sock, fe_port=fe_port, port=port))
    listener = socket.create_server(("127.0.0.2", port))
    proc: ManagedProcess | None = None
    try:
        proc = start_haproxy(cfg, sock, tmp_path)  # waits until its admin socket answers
        yield HAProxy(proc, sock, op_sock, fe_port, listener)
    finally:
        if proc is not None:
            proc.stop(grace_s=5)
        listener.close()


def recorded_lines(client: HAProxyClient, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every line the client sends from now on (one per exchange)."""
    lines: list[str] = []
    exchange = client.exchange

    def recording(line: str) -> str:
        lines.append(line)
        return exchange(line)
    monkeypatch.setattr(client, "exchange", recording)
    return lines


def cmd(text: str) -> Command:
    backend, server = text.split()[-3].split("/") if "state" in text else ("", "")
    return Command(text, backend, server, reason="test")


def test_refused_command_is_reported_with_its_command_text(haproxy: HAProxy) -> None:
    """In a batch each refused command comes back with its text and HAProxy's reply; rest runs."""
    client = HAProxyClient(str(haproxy.sock))
    commands = [
        cmd("set server g_master/n1 state maint"),
        cmd("set server g_master/nosuch state maint"),
        cmd("set server nosuch/n1 state maint"),
        cmd("set server g_master/n2 state ready"),
    ]
    results = client.run(commands)
    assert [(r.command.text, r.ok, r.output) for r in results] == [
        ("set server g_master/n1 state maint", True, ""),
        ("set server g_master/nosuch state maint", False, "No such server."),
        ("set server nosuch/n1 state maint", False, "No such backend."),
        ("set server g_master/n2 state ready", True, ""),
    ]
    servers = client.state().backends["g_master"]
    assert (servers["n1"].admin, servers["n2"].admin) == (AdminState.MAINT, AdminState.READY)


def test_operator_level_socket_refuses_changes_visibly(haproxy: HAProxy) -> None:
    """On a socket below level admin every state change is a failed result, not a silent no-op."""
    client = HAProxyClient(str(haproxy.op_sock))
    (result,) = client.run([cmd("set server g_master/n1 state maint")])
    assert not result.ok
    assert result.output == "Permission denied"
    admin = HAProxyClient(str(haproxy.sock)).state().backends["g_master"]["n1"].admin
    assert admin is AdminState.READY


def test_state_parses_a_live_reply_with_sessions(haproxy: HAProxy) -> None:
    """`state()` gives the process identity, every server's admin state and its sessions."""
    client = HAProxyClient(str(haproxy.sock))
    state = client.state()
    assert state.info.pid == haproxy.proc.pid
    assert state.info.start_time_s > 0 and not state.info.stopping
    g = state.backends["g_master"]
    assert (g["n1"].admin, g["n2"].admin) == (AdminState.READY, AdminState.MAINT)
    assert (g["n1"].addr, g["n2"].addr) == ("127.0.0.2", "127.0.0.3")
    assert g["n1"].sessions == 0
    with socket.create_connection(("127.0.0.1", haproxy.fe_port), timeout=5):
        conn, _ = haproxy.listener.accept()
        with conn:
            wait_until(lambda: client.state().backends["g_master"]["n1"].sessions == 1, 5,
                       "one session on g_master/n1")


def test_a_backend_name_haproxy_cannot_have_reads_as_a_missing_backend(haproxy: HAProxy) -> None:
    """Reading some backends where one name has a `;` or a blank (a Sentinel group named
    so): that one is simply not there (HAProxy cannot have it), the others are read; no
    exception (a worker would lose its whole batch to it)."""
    client = HAProxyClient(str(haproxy.sock))
    state = client.state(["a;b_master", "c d_master", "g_master"])
    assert set(state.backends) == {"g_master"}


def test_large_batch_is_split_below_the_line_limit(haproxy: HAProxy) -> None:
    """Hundreds of commands (over 16 kB as one line) all run and each gets its result."""
    client = HAProxyClient(str(haproxy.sock))
    commands = [
        cmd(f"set server g_master/n2 state {'maint' if i % 2 else 'ready'}") for i in range(800)
    ]
    assert sum(len(c.text) + 2 for c in commands) > 16384
    results = client.run(commands)
    assert len(results) == 800
    assert all(r.ok for r in results)
    assert [r.command for r in results] == commands


def test_run_and_read_sees_its_own_commands_applied_in_one_exchange(
        haproxy: HAProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands and the read of their backends go in one line; the read shows the new admin
    states (HAProxy runs a line in order), and a refused command keeps its own result."""
    client = HAProxyClient(str(haproxy.sock))
    lines = recorded_lines(client, monkeypatch)
    done = client.run_and_read([cmd("set server g_master/n1 state maint"),
                                cmd("set server g_master/nosuch state ready"),
                                cmd("set server g_master/n2 state ready")], ["g_master"])
    assert len(lines) == 1
    assert [(r.ok, r.output) for r in done.results] == [(True, ""), (False, "No such server."),
                                                          (True, "")]
    assert done.state is not None and not done.read_error
    assert done.state.info.pid == haproxy.proc.pid
    g = done.state.backends["g_master"]
    assert (g["n1"].admin, g["n2"].admin) == (AdminState.MAINT, AdminState.READY)


def test_run_and_read_too_long_for_one_line_runs_then_reads(
        haproxy: HAProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands that do not fit in one line with the read: run in batches, then read; the
    same results and state as in one exchange."""
    client = HAProxyClient(str(haproxy.sock))
    lines = recorded_lines(client, monkeypatch)
    commands = [cmd(f"set server g_master/n2 state {'ready' if i % 2 else 'maint'}")
                for i in range(800)]
    done = client.run_and_read(commands, ["g_master"])
    assert len(lines) > 2 and lines[-1].startswith("show info; show servers state g_master")
    assert len(done.results) == 800 and all(r.ok for r in done.results)
    assert done.state is not None
    assert done.state.backends["g_master"]["n2"].admin is AdminState.READY


def test_command_with_separator_is_refused_before_sending(haproxy: HAProxy) -> None:
    """A command containing ';' (it would become two commands) is refused, naming it."""
    client = HAProxyClient(str(haproxy.sock))
    with pytest.raises(HAProxyError, match="contains ';'") as e:
        client.run([cmd("set server g_master/n1 state maint; set server g_master/n2 state ready")])
    assert e.value.command.startswith("set server g_master/n1")
    with pytest.raises(HAProxyError, match="contains ';'"):
        client.run_and_read([cmd("set server g_master/n1 state maint; set server g_master/n2"
                                 " state ready")], ["g_master"])
    assert client.state().backends["g_master"]["n1"].admin is AdminState.READY


def test_unreachable_socket_raises_naming_the_target(tmp_path: Path) -> None:
    """A missing unix socket or a closed TCP port raises HAProxyError naming the target."""
    missing = str(tmp_path / "nosuch.sock")
    with pytest.raises(HAProxyError, match=r"nosuch\.sock") as e:
        HAProxyClient(missing).state()
    assert e.value.target == missing
    assert "show info; show servers state" in str(e.value)
    port = free_port(["127.0.0.1"])
    target = f"tcp:127.0.0.1:{port}"
    with pytest.raises(HAProxyError, match=f"haproxy {target}: cannot talk to the socket"):
        HAProxyClient(target, timeout_s=0.5).run([cmd("set server g_master/n1 state maint")])


def test_stopped_haproxy_raises_naming_the_target(haproxy: HAProxy) -> None:
    """After HAProxy exits, reading its state raises HAProxyError naming the socket."""
    client = HAProxyClient(str(haproxy.sock))
    haproxy.proc.kill(signal.SIGTERM, timeout_s=5)  # SIGTERM, then until it has exited
    with pytest.raises(HAProxyError, match=re.escape(str(haproxy.sock))):
        client.info()


def held_in_a_thread(client: HAProxyClient) -> tuple[threading.Thread, list[bool]]:
    """`client.hold(30 s)` running in a thread, once its session is open; the list gets what
    `hold` returned."""
    opened = threading.Event()
    ended: list[bool] = []
    t = threading.Thread(target=lambda: ended.append(client.hold(30.0, opened.set)), daemon=True)
    t.start()
    assert opened.wait(5), "the held session did not open"
    return t, ended


def test_held_session_ends_the_moment_haproxy_dies(haproxy: HAProxy) -> None:
    """`hold` keeps an idle session open; a SIGKILL of HAProxy ends it (True, HAProxy ended
    it), long before its `max_s`; once HAProxy is gone, `hold` cannot connect and raises
    naming the socket."""
    client = HAProxyClient(str(haproxy.sock))
    t, ended = held_in_a_thread(client)
    try:
        haproxy.proc.kill(signal.SIGKILL, timeout_s=5)
        t.join(5)
        assert ended == [True]
    finally:
        client.release()
        t.join(5)
    with pytest.raises(HAProxyError, match=re.escape(str(haproxy.sock))):
        client.hold(1.0)


def test_held_session_is_ours_to_end(haproxy: HAProxy) -> None:
    """`hold` returns False after `max_s` (HAProxy kept the idle session) and at once on
    `release()` from another thread; HAProxy keeps answering meanwhile."""
    client = HAProxyClient(str(haproxy.sock))
    assert client.hold(0.2) is False
    t, ended = held_in_a_thread(client)
    try:
        assert client.info().pid == haproxy.proc.pid
        client.release()
        t.join(5)
        assert ended == [False]
    finally:
        client.release()
        t.join(5)
