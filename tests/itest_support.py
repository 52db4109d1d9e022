"""Helpers for the tests on real processes: a LocalStack started on free ports, the controller
as a subprocess (daemon or one-shot CLI), bounded waits, HAProxy state as the admin socket
reports it, and raw RESP connections through HAProxy.

Used by tests/conftest.py (fixtures), tests/test_integration_*.py and the operations tests
(auth, metrics, TLS, webhooks); bench/ scripts may use them too. Everything here observes real
processes; nothing is mocked. Every wait polls a condition until a deadline and raises
:class:`WaitTimeout` naming what it waited for; processes are stopped by the PID we started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

from controller.localstack import (
    ConnectionClosed,
    Layout,
    LocalStack,
    PortInUseError,
    RespError,
    encode_command,
    parse_reply,
    stop_process,
)

T = TypeVar("T")

StackFactory = Callable[..., LocalStack]

REPO_ROOT = Path(__file__).resolve().parent.parent
POLL_S = 0.02


def procs_under(workdir: Path) -> list[int]:
    """PIDs of live processes whose cwd is inside ``workdir`` (independent of LocalStack)."""
    root = str(workdir.resolve())
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if cwd == root or cwd.startswith(root + "/"):
            out.append(int(entry))
    return out


class WaitTimeout(AssertionError):
    """A bounded wait ran out; the message names the condition (and the last error seen)."""


def wait_until(
    cond: Callable[[], T | None],
    timeout_s: float,
    what: str,
    interval_s: float = POLL_S,
    context: Callable[[], str] | None = None,
) -> T:
    """Poll ``cond`` until it returns a truthy value (returned); raise naming ``what``.

    Connection errors and error replies count as "not yet" (the last one is quoted).
    ``context`` is called on timeout to add a description of the state seen.
    """
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while True:
        try:
            value = cond()
            if value:
                return value
            last_error = ""
        except (OSError, RespError, ValueError, KeyError) as e:
            last_error = f" (last error: {e!r})"
        if time.monotonic() >= deadline:
            extra = ""
            if context is not None:
                try:
                    extra = "\n" + context()
                except Exception as e:  # the context is a debugging aid only
                    extra = f"\n(context unavailable: {e!r})"
            raise WaitTimeout(
                f"timed out after {timeout_s} s waiting for {what}{last_error}{extra}"
            )
        time.sleep(interval_s)


# --------------------------------------------------------------------------- processes


def start_stack(
    workdir: Callable[[int], Path], layout: Callable[[], Layout], attempts: int = 3
) -> LocalStack:
    """Start a LocalStack in ``workdir(attempt)`` on a fresh ``layout()``.

    Free ports can be taken between choosing and binding: on :class:`PortInUseError` it tries
    again with new ports, up to ``attempts`` times (then the last error is raised).
    """
    for attempt in range(attempts):
        stack = LocalStack(workdir(attempt), layout())
        try:
            stack.start()
        except PortInUseError:
            if attempt == attempts - 1:
                raise
            continue
        return stack
    raise AssertionError("attempts must be at least 1")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process' environment without any SENTINEL_HAPROXY_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_HAPROXY_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def target_args(stack: LocalStack, sentinels: Sequence[str] | None = None) -> list[str]:
    """``--sentinel`` (the stack's, or ``sentinels`` as host:port) and ``--haproxy-socket``."""
    addrs = sentinels if sentinels is not None else [f"{h}:{p}" for h, p in stack.sentinel_addrs]
    return ["--sentinel", ",".join(addrs), "--haproxy-socket", str(stack.haproxy_socket)]


# --------------------------------------------------------------------------- HAProxy state


def admin_bits(stack: LocalStack) -> dict[str, dict[str, int]]:
    """``show servers state`` as backend -> server -> ``srv_admin_state`` bits."""
    text = stack.haproxy_command("show servers state", timeout_s=2.0)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0].strip() != "1":
        raise ValueError(f"unexpected show servers state reply: {text[:200]!r}")
    header: list[str] = []
    out: dict[str, dict[str, int]] = {}
    for line in lines[1:]:
        if line.startswith("#"):
            header = line[1:].split()
            continue
        row = dict(zip(header, line.split(), strict=False))
        out.setdefault(row["be_name"], {})[row["srv_name"]] = int(row["srv_admin_state"])
    return out


def admin_name(bits: int) -> str:
    """Admin bits (facts A.1.1) as ``ready``/``maint``/``drain``: 0x01/0x02/0x20/0x40 maint,
    0x08/0x10 drain; 0x04 alone (config ``disabled`` then set ready) is ready."""
    if bits & (0x01 | 0x02 | 0x20 | 0x40):
        return "maint"
    if bits & (0x08 | 0x10):
        return "drain"
    return "ready"


def servers_state(stack: LocalStack) -> dict[str, dict[str, str]]:
    """``show servers state`` as backend -> server -> ``ready``/``maint``/``drain``."""
    return {
        backend: {server: admin_name(bits) for server, bits in servers.items()}
        for backend, servers in admin_bits(stack).items()
    }


def ready(stack: LocalStack, backend: str, server: str) -> bool:
    """Whether HAProxy routes to ``backend/server``: no maint/drain admin bit."""
    return servers_state(stack).get(backend, {}).get(server) == "ready"


def server_sessions(stack: LocalStack, backend: str, server: str) -> int:
    """Current sessions (``scur``) of one server, from ``show stat``."""
    text = stack.haproxy_command(f"show stat {backend} 4 -1", timeout_s=2.0)
    lines = text.splitlines()
    header = lines[0].lstrip("# ").split(",")
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == backend and row.get("svname") == server:
            return int(row["scur"] or 0)
    raise KeyError(f"{backend}/{server} not in show stat")


def expected_state(
    stack: LocalStack,
    masters: Mapping[str, str],
    read_ready: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, dict[str, str]]:
    """The HAProxy state the controller should reach for ``masters`` (group -> node name).

    Write backend: exactly the master ready. Read backend: ``read_ready[group]`` ready
    (default: every other node of the group), everything else maint.
    """
    out: dict[str, dict[str, str]] = {}
    for group, master in masters.items():
        names = [n for n, node in stack.nodes.items() if node.group == group]
        readers = set(read_ready[group]) if read_ready and group in read_ready else (
            set(names) - {master}
        )
        out[f"{group}_master"] = {n: "ready" if n == master else "maint" for n in names}
        out[f"{group}_replicas"] = {n: "ready" if n in readers else "maint" for n in names}
    return out


def state_matches(stack: LocalStack, want: Mapping[str, Mapping[str, str]]) -> bool:
    have = servers_state(stack)
    return all(have.get(b) == dict(servers) for b, servers in want.items())


def wait_state(
    stack: LocalStack,
    masters: Mapping[str, str],
    read_ready: Mapping[str, Iterable[str]] | None = None,
    timeout_s: float = 20.0,
    what: str = "",
) -> None:
    """Wait until HAProxy shows :func:`expected_state`; the error shows wanted vs actual."""
    want = expected_state(stack, masters, read_ready)

    def context() -> str:
        return f"wanted {want}\nhaproxy has {servers_state(stack)}"

    wait_until(
        lambda: state_matches(stack, want),
        timeout_s,
        what or f"haproxy state with masters {dict(masters)}",
        context=context,
    )


def wait_backend(
    stack: LocalStack, backend: str, want: Mapping[str, str], timeout_s: float = 20.0
) -> None:
    """Wait until one backend's servers have exactly the admin states in ``want``."""
    wait_until(
        lambda: servers_state(stack).get(backend) == dict(want),
        timeout_s,
        f"backend {backend} to be {dict(want)}",
        context=lambda: f"haproxy has {servers_state(stack)}",
    )


@dataclass
class Background:
    """A daemon thread running :meth:`_run` between :meth:`start` and :meth:`stop`;
    ``_run`` loops until ``_stop`` is set."""

    thread_name: ClassVar[str] = "background"
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            assert not self._thread.is_alive(), f"{self.thread_name} thread did not stop"

    def _run(self) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Sample:
    t: float
    roles: dict[str, str]  # node -> role it reported just BEFORE `state` was read ("down")
    state: dict[str, dict[str, str]]  # servers_state()


@dataclass
class StatePoller(Background):
    """A thread sampling ``show servers state`` every ``interval_s`` (and, just before each
    sample, the role that each node in ``roles_of`` reports), between start() and stop()."""

    thread_name: ClassVar[str] = "state-poller"
    stack: LocalStack
    roles_of: Sequence[str] = ()
    interval_s: float = 0.01
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0

    def seen(self, backend: str, server: str) -> set[str]:
        """Every admin state ``backend/server`` was seen in."""
        return {s.state[backend][server] for s in self.samples}

    def _role(self, node: str) -> str:
        try:
            return self.stack.role(node)
        except (OSError, RespError):
            return "down"

    def _run(self) -> None:
        while not self._stop.is_set():
            roles = {n: self._role(n) for n in self.roles_of}
            try:
                state = servers_state(self.stack)
            except (OSError, ValueError, KeyError):
                self.errors += 1  # HAProxy restarting: nothing routable to see
            else:
                self.samples.append(Sample(time.monotonic(), roles, state))
            self._stop.wait(self.interval_s)


def wait_sentinels_agree(
    stack: LocalStack, group: str, node: str, timeout_s: float = 30.0,
    sentinels: Sequence[int] | None = None,
) -> None:
    """Wait until every (given) sentinel names ``node`` as ``group``'s master."""
    addr = stack.nodes[node].addr
    idx = range(stack.layout.sentinels) if sentinels is None else sentinels
    wait_until(
        lambda: all(stack.master_addr(i, group) == addr for i in idx),
        timeout_s,
        f"sentinels {list(idx)} to name {node} {addr} as master of {group}",
    )


def wait_replica_linked(stack: LocalStack, node: str, timeout_s: float = 30.0) -> None:
    """Wait until ``node`` reports role slave with ``master_link_status:up``."""

    def linked() -> bool:
        info = str(stack.redis_command(node, "INFO", "replication"))
        return "role:slave" in info and "master_link_status:up" in info

    wait_until(linked, timeout_s, f"{node} to be a replica with master_link_status:up")


# --------------------------------------------------------------------------- RESP over TCP


class RawRedis:
    """One plain TCP connection speaking RESP2: no pool, no reconnect, no retries.

    Used for connections held through HAProxy: what happens to *this* connection is exactly
    what the test sees.
    """

    def __init__(self, host: str, port: int, timeout_s: float = 2.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._file = self.sock.makefile("rb")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, *args: str | int) -> None:
        try:
            self.sock.sendall(encode_command(*args))
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ConnectionClosed(f"send failed: {e!r}") from e

    def read(self) -> object:
        """One reply; EOF or a reset raises :class:`ConnectionClosed`."""
        try:
            return parse_reply(self._file.readline, self._file.read)
        except ConnectionResetError as e:
            raise ConnectionClosed(f"reset: {e!r}") from e

    def call(self, *args: str | int) -> object:
        self.send(*args)
        return self.read()

    def node_host(self) -> str:
        """The loopback address the Redis node behind this connection binds (its identity)."""
        reply = self.call("CONFIG", "GET", "bind")
        assert isinstance(reply, list) and len(reply) == 2, reply
        return str(reply[1]).split()[0]


def connect_write(stack: LocalStack, group: str, timeout_s: float = 2.0) -> RawRedis:
    return RawRedis("127.0.0.1", stack.write_port(group), timeout_s)


def node_behind_write(stack: LocalStack, group: str) -> str:
    """Name of the node a new connection to ``group``'s write frontend reaches."""
    with connect_write(stack, group) as c:
        host = c.node_host()
    return next(n for n, node in stack.nodes.items() if node.host == host)


@dataclass(frozen=True)
class Ack:
    value: int
    node: str  # node name that acknowledged it
    t: float  # time.monotonic() when the ack was read


@dataclass
class Writer(Background):
    """A thread writing ``RPUSH key i`` (i = 0, 1, 2...) through a write frontend.

    Each connection first asks ``CONFIG GET bind`` to learn which node it reached (a TCP
    session through HAProxy stays on one server), so every acknowledged write is tagged with
    the node that acknowledged it. On any error it reconnects after ``pause_s``.
    """

    thread_name: ClassVar[str] = "writer"
    stack: LocalStack
    group: str
    key: str = "acked"
    pause_s: float = 0.001
    timeout_s: float = 1.0
    acks: list[Ack] = field(default_factory=list)
    errors: int = 0
    connections: list[tuple[float, str]] = field(default_factory=list)  # (t, node)

    def _hosts(self) -> dict[str, str]:
        return {node.host: name for name, node in self.stack.nodes.items()}

    def _run(self) -> None:
        hosts = self._hosts()
        i = 0
        while not self._stop.is_set():
            conn: RawRedis | None = None
            try:
                conn = connect_write(self.stack, self.group, self.timeout_s)
                node = hosts.get(conn.node_host(), "?")
                self.connections.append((time.monotonic(), node))
                while not self._stop.is_set():
                    reply = conn.call("RPUSH", self.key, i)
                    if not isinstance(reply, int):
                        raise ConnectionError(f"unexpected RPUSH reply {reply!r}")
                    self.acks.append(Ack(i, node, time.monotonic()))
                    i += 1
                    if self.pause_s:
                        time.sleep(self.pause_s)
            except (OSError, RespError, AssertionError):
                self.errors += 1
                i += 1  # the value may or may not have been applied: never reuse it
            finally:
                if conn is not None:
                    conn.close()
            self._stop.wait(self.pause_s)


def list_values(stack: LocalStack, node: str, key: str) -> set[int]:
    """Every value of list ``key`` on ``node`` (asked directly, not through HAProxy)."""
    reply = stack.redis_command(node, "LRANGE", key, 0, -1, timeout_s=5.0)
    assert isinstance(reply, list), reply
    return {int(str(v)) for v in reply}


# --------------------------------------------------------------------------- the controller


@dataclass
class ControllerProc:
    """``python -m controller run`` as a subprocess with JSON logs in ``log_path``.

    ``start()``/``stop()`` may be called repeatedly (a restart appends to the same log); as a
    context manager it starts on enter and stops on exit. ``env`` adds to the environment
    (every inherited SENTINEL_HAPROXY_* is dropped), ``sentinels`` replaces the stack's
    Sentinels (host:port), ``metrics_address`` serves /metrics and /healthz there. The log is
    read as JSON lines; :meth:`problems` names what must never be in it.
    """

    stack: LocalStack
    log_path: Path
    resync_interval_s: float = 1.0
    extra_args: Sequence[str] = ()
    env: Mapping[str, str] | None = None
    sentinels: Sequence[str] | None = None
    metrics_address: str | None = None
    popen: subprocess.Popen[bytes] | None = None
    returncode: int | None = field(default=None, init=False)  # of the last stop() that stopped it
    exit_codes: list[int] = field(default_factory=list)
    stop_problems: list[str] = field(default_factory=list)

    def argv(self) -> list[str]:
        metrics = ["--metrics-address", self.metrics_address] if self.metrics_address else []
        return [
            sys.executable, "-m", "controller", "run",
            "--log-format", "json",
            *target_args(self.stack, self.sentinels),
            "--resync-interval-s", str(self.resync_interval_s),
            *metrics,
            *self.extra_args,
        ]

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None and self.popen.poll() is None else None

    def alive(self) -> bool:
        return self.pid is not None

    def start(self) -> None:
        if self.alive():
            raise RuntimeError(f"controller already running (pid {self.pid})")
        self.returncode = None
        with open(self.log_path, "ab") as logf:
            self.popen = subprocess.Popen(
                self.argv(),
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                env=clean_env(self.env),
                start_new_session=True,
            )

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL; records a problem if it had to."""
        p = self.popen
        if p is None or p.poll() is not None:
            return None if p is None else p.returncode
        if not stop_process(p, grace_s=timeout_s):
            self.stop_problems.append(
                f"controller pid {p.pid} did not exit within {timeout_s} s of SIGTERM"
            )
        rc = p.returncode
        self.returncode = rc
        self.exit_codes.append(rc)
        if rc != 0:
            self.stop_problems.append(f"controller pid {p.pid} exited with code {rc} on SIGTERM")
        return rc

    def kill(self) -> None:
        """SIGKILL (a crash): no problem recorded."""
        p = self.popen
        if p is not None and p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    # -- the log ---------------------------------------------------------------------
    def text(self) -> str:
        """The whole log so far ("" before the first start)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def raw_lines(self) -> list[str]:
        """Complete lines written so far (a line still being written is left out)."""
        lines = self.text().split("\n")
        return lines[:-1]  # the part after the last newline is incomplete (or empty)

    def lines(self) -> list[dict[str, Any]]:
        """Every JSON log line so far (non-JSON lines are skipped; see :meth:`problems`)."""
        out = []
        for line in self.raw_lines():
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    out.append(obj)
        return out

    def mark(self) -> int:
        """A position in the log: pass it as ``since`` to look only at later lines."""
        return len(self.lines())

    def events(self, event: str, since: int = 0, **match: object) -> list[dict[str, Any]]:
        """Log lines with ``event`` and every ``match`` field equal, after ``since``."""
        return [
            ln for ln in self.lines()[since:]
            if ln.get("event") == event and all(ln.get(k) == v for k, v in match.items())
        ]

    def wait_event(
        self, event: str, timeout_s: float = 20.0, since: int = 0, **match: object
    ) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            if not self.alive():
                raise AssertionError(f"controller exited; log tail:\n{self.tail()}")
            hits = self.events(event, since, **match)
            return hits[0] if hits else None

        return wait_until(
            found, timeout_s, f"controller log event {event!r} with {match}",
            context=lambda: "controller log tail:\n" + self.tail(),
        )

    def tail(self, n: int = 25) -> str:
        return "\n".join(line[:400] for line in self.raw_lines()[-n:])

    def problems(self) -> list[str]:
        """Lines that must never appear: ``unexpected_error`` events and tracebacks."""
        out = list(self.stop_problems)
        for line in self.raw_lines():
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            if isinstance(obj, dict) and obj.get("event") == "unexpected_error":
                out.append(f"unexpected_error logged: {line[:2000]}")
            elif "Traceback" in line or "Exception in thread" in line:
                out.append(f"traceback in controller output: {line[:2000]}")
        return out


def run_cli(
    stack: LocalStack,
    *args: str,
    env: Mapping[str, str] | None = None,
    sentinels: Sequence[str] | None = None,
    timeout_s: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """One ``python -m controller <args> --sentinel ... --haproxy-socket ...`` run against
    ``stack``, output captured; ``env`` and ``sentinels`` as for :class:`ControllerProc`."""
    argv = [sys.executable, "-m", "controller", *args, *target_args(stack, sentinels)]
    return subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout_s, env=clean_env(env), check=False)


ControllerFactory = Callable[..., ControllerProc]
