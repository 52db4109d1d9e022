"""Test-only helpers on top of the lab (lab/): stacks on free ports, the daemon for a stack,
HAProxy's admin state as the tests compare it, and the waits the integration tests share.

Everything here observes real processes; nothing is mocked. The instruments themselves (RESP
connections, writers, the daemon as a child process, the one wait helper) are the lab's:
tests use them, they do not copy them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Self

from controller.haproxy import HAProxyClient, HAProxyError
from controller.model import AdminState
from lab.daemon import ControllerDaemon, clean_env, lease_given
from lab.localstack import Layout, LocalStack, PortInUseError, free_port, write_haproxy_config
from lab.procs import ManagedProcess, start_haproxy
from lab.resp import ConnectionClosed, RespConn, RespError
from lab.wait import wait_until

StackFactory = Callable[..., LocalStack]
ControllerFactory = Callable[..., ControllerDaemon]

REPO_ROOT = Path(__file__).resolve().parent.parent
FAILOVER_S = 40.0  # deadline for Sentinel's failover and the controller following it


def assert_cut(held: RespConn, *command: str | int, served: str) -> None:
    """Sending ``command`` on ``held`` finds the connection closed; ``served`` names the
    failure if a reply comes back instead."""
    try:
        reply = held.command(*command)
    except ConnectionClosed:
        return
    raise AssertionError(f"{served}: {reply!r}")


def procs_under(workdir: Path) -> list[int]:
    """PIDs of live processes whose cwd is inside ``workdir`` (independent of the lab)."""
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


def running(pid: int) -> bool:
    """True while ``pid`` runs. A zombie counts as gone: it has exited, and one whose parent
    exited first stays a zombie here forever (this machine's PID 1 reaps no orphan), e.g. the
    fork a Redis node was saving an RDB with when it was stopped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def describe(pids: list[int]) -> str:
    """``pid (command) state`` of each of ``pids``, for a failure message."""
    out = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            out.append(f"{pid} {stat[stat.index('('):stat.rindex(')') + 1]} "
                       f"{stat.rsplit(')', 1)[1].split()[0]}")
        except (OSError, ValueError, IndexError):
            out.append(f"{pid} (gone)")
    return ", ".join(out)


def children_of(pid: int) -> list[int]:
    """PIDs of the live processes whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # Field 4 (ppid) comes after the command name, which may hold spaces: split after ")".
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out


# --------------------------------------------------------------------------- processes


def start_stack(
    workdir: Callable[[int], Path], layout: Callable[[], Layout], attempts: int = 3
) -> LocalStack:
    """Start a LocalStack in ``workdir(attempt)`` on a fresh ``layout()``.

    Free ports can be taken between choosing and binding: on PortInUseError it tries again
    with new ports, up to ``attempts`` times (then the last error is raised).
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


def sentinel_list(stack: LocalStack) -> list[str]:
    return [str(a) for a in stack.sentinel_addrs]


def target_args(stack: LocalStack, sentinels: Sequence[str] | None = None) -> list[str]:
    """``--sentinel`` (the stack's, or ``sentinels`` as host:port) and ``--haproxy-socket``."""
    addrs = sentinels if sentinels is not None else sentinel_list(stack)
    return ["--sentinel", ",".join(addrs), "--haproxy-socket", str(stack.haproxy_socket)]


def controller_for(
    stack: LocalStack,
    log_path: Path,
    resync_interval_s: float = 1.0,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    sentinels: Sequence[str] | None = None,
    metrics_address: str | None = None,
) -> ControllerDaemon:
    """The daemon against ``stack`` (or other ``sentinels``), not started yet."""
    return ControllerDaemon(
        sentinels if sentinels is not None else sentinel_list(stack),
        [stack.haproxy_admin], log_path, extra_args, env, resync_interval_s,
        metrics_address,
    )


def run_cli(
    stack: LocalStack,
    *args: str,
    env: Mapping[str, str] | None = None,
    sentinels: Sequence[str] | None = None,
    timeout_s: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """One ``python -m controller <args> --sentinel ... --haproxy-socket ...`` run against
    ``stack``, output captured; ``env`` adds to a clean environment."""
    argv = [sys.executable, "-m", "controller", *args, *target_args(stack, sentinels)]
    return subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout_s, env=clean_env(env), check=False)


# --------------------------------------------------------------------------- HAProxy state


def servers_state(stack: LocalStack) -> dict[str, dict[str, str]]:
    """HAProxy's servers as backend -> server -> ``ready``/``maint``/``drain``."""
    return {
        backend: {name: srv.admin.value for name, srv in servers.items()}
        for backend, servers in stack.haproxy_state().backends.items()
    }


def ready(stack: LocalStack, backend: str, server: str) -> bool:
    """Whether HAProxy routes to ``backend/server``: no maint/drain admin bit."""
    srv = stack.haproxy_state().backends.get(backend, {}).get(server)
    return srv is not None and srv.admin is AdminState.READY


def server_sessions(stack: LocalStack, backend: str, server: str) -> int:
    """Current sessions (``scur``) of one server."""
    return stack.haproxy_state().backends[backend][server].sessions


def expected_state(
    stack: LocalStack,
    masters: Mapping[str, str],
    read_ready: Mapping[str, Iterable[str]] | None = None,
    fallback: Mapping[str, str | None] | None = None,
) -> dict[str, dict[str, str]]:
    """The HAProxy state the controller should reach for ``masters`` (group -> node name).

    Write backend: exactly the master ready. Read backend: ``read_ready[group]`` ready
    (default: every other node of the group), the ``<node>-fallback`` backup server of
    ``fallback[group]`` (default: the master) ready, everything else maint.
    """
    out: dict[str, dict[str, str]] = {}
    for group, master in masters.items():
        names = [n for n, node in stack.nodes.items() if node.group == group]
        readers = set(read_ready[group]) if read_ready and group in read_ready else (
            set(names) - {master}
        )
        fb = fallback[group] if fallback and group in fallback else master
        out[stack.write_backend(group)] = {n: "ready" if n == master else "maint" for n in names}
        out[stack.read_backend(group)] = {
            **{n: "ready" if n in readers else "maint" for n in names},
            **{f"{n}-fallback": "ready" if n == fb else "maint" for n in names},
        }
    return out


def state_matches(stack: LocalStack, want: Mapping[str, Mapping[str, str]]) -> bool:
    have = servers_state(stack)
    return all(have.get(b) == dict(servers) for b, servers in want.items())


_NOT_YET = (OSError, RespError, HAProxyError, ValueError, KeyError)


def wait_state(
    stack: LocalStack,
    masters: Mapping[str, str],
    read_ready: Mapping[str, Iterable[str]] | None = None,
    timeout_s: float = 20.0,
    what: str = "",
) -> None:
    """Wait until HAProxy shows :func:`expected_state`; the error shows wanted vs actual."""
    want = expected_state(stack, masters, read_ready)
    wait_until(
        lambda: state_matches(stack, want), timeout_s,
        what or f"haproxy state with masters {dict(masters)}",
        context=lambda: f"wanted {want}\nhaproxy has {servers_state(stack)}", not_yet=_NOT_YET,
    )


def wait_lease(stack: LocalStack, timeout_s: float = 20.0) -> None:
    """Until HAProxy takes new writes (`lease_given`)."""
    wait_until(lambda: lease_given(str(stack.haproxy_socket)), timeout_s,
               "HAProxy's write lease from the controller", not_yet=_NOT_YET)


def wait_backend(
    stack: LocalStack, backend: str, want: Mapping[str, str], timeout_s: float = 20.0
) -> None:
    """Wait until one backend's servers have exactly the admin states in ``want``."""
    wait_until(
        lambda: servers_state(stack).get(backend) == dict(want), timeout_s,
        f"backend {backend} to be {dict(want)}",
        context=lambda: f"haproxy has {servers_state(stack)}", not_yet=_NOT_YET,
    )


@dataclass(frozen=True)
class Sample:
    t: float
    roles: dict[str, str]  # node -> role it reported just BEFORE `state` was read ("down")
    state: dict[str, dict[str, str]]  # servers_state()


@dataclass
class StatePoller:
    """A thread sampling HAProxy's server states every ``interval_s`` (and, just before each
    sample, the role that each node in ``roles_of`` reports), between start() and stop()."""

    thread_name: ClassVar[str] = "state-poller"
    stack: LocalStack
    roles_of: Sequence[str] = ()
    interval_s: float = 0.01
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0
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
            except HAProxyError:
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


# --------------------------------------------------------------------------- through HAProxy


def node_host(conn: RespConn) -> str:
    """The loopback address the Redis node behind ``conn`` binds (its identity)."""
    reply = conn.command("CONFIG", "GET", "bind")
    assert isinstance(reply, list) and len(reply) == 2, reply
    return str(reply[1]).split()[0]


def connect_write(stack: LocalStack, group: str, timeout_s: float = 2.0) -> RespConn:
    return RespConn(stack.write_frontend(group), timeout_s)


def node_behind_write(stack: LocalStack, group: str) -> str:
    """Name of the node a new connection to ``group``'s write frontend reaches."""
    with connect_write(stack, group) as c:
        host = node_host(c)
    return next(n for n, node in stack.nodes.items() if node.host == host)


def list_values(stack: LocalStack, node: str, key: str) -> set[int]:
    """Every value of list ``key`` on ``node`` (asked directly, not through HAProxy)."""
    reply = stack.redis_command(node, "LRANGE", key, 0, -1, timeout_s=5.0)
    assert isinstance(reply, list), reply
    return {int(str(v)) for v in reply}


def held_write(stack: LocalStack) -> RespConn:
    """The held client of the failover tests: a connection through redis1's write frontend,
    on redis1a, whose first write (RPUSH acked 1) has reached the replica."""
    held = connect_write(stack, "redis1", timeout_s=5)
    try:
        assert node_host(held) == stack.nodes["redis1a"].host
        assert held.command("RPUSH", "acked", 1) == 1
        assert held.command("WAIT", 1, 5000) == 1  # on the replica before the master stops
    except BaseException:
        held.close()
        raise
    return held


def fail_over_holding(stack: LocalStack, held: RespConn, served: str,
                      while_paused: Callable[[], object] | None = None) -> None:
    """SIGSTOP redis1a, wait until the Sentinels name redis1b and HAProxy routes writes there
    (and `while_paused`), SIGCONT it: the resumed old master, not yet converted by Sentinel,
    gets no write through `held` (`served` names the failure if it does)."""
    stack.pause_node("redis1a")
    try:
        wait_sentinels_agree(stack, "redis1", "redis1b", FAILOVER_S)
        wait_state(stack, {"redis1": "redis1b"}, read_ready={"redis1": set()},
                   timeout_s=FAILOVER_S)
        if while_paused is not None:
            while_paused()
    finally:
        stack.resume_node("redis1a")
    assert stack.role("redis1a") == "master"  # resumed, not yet converted by Sentinel
    assert_cut(held, "RPUSH", "acked", 2, served=served)
    assert 2 not in list_values(stack, "redis1a", "acked")



# --------------------------------------------------------------------------- a second HAProxy


@dataclasses.dataclass
class ExtraHAProxy:
    """A second haproxy on a stack's Redis nodes (its own ports and admin socket)."""

    client: HAProxyClient
    proc: ManagedProcess


@contextlib.contextmanager
def extra_haproxy(stack: LocalStack, *flags: str) -> Iterator[ExtraHAProxy]:
    """A second haproxy running the shipped config with its own frontend ports and admin
    socket, in front of the same Redis nodes (a second HAProxy replica of a deployment);
    stopped by PID on exit. `flags`: e.g. `-W` (master-worker)."""
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
    """The servers of `backend` in admin state ready on that HAProxy."""
    return {
        name
        for name, srv in client.state().backends[backend].items()
        if srv.admin is AdminState.READY
    }


def wait_ready(client: HAProxyClient, backend: str, want: set[str], timeout_s: float) -> None:
    """Wait until exactly `want` is ready in `backend` of that HAProxy."""
    wait_until(lambda: ready_in(client, backend) == want, timeout_s,
               f"{sorted(want)} ready in {backend} of {client.target}")
