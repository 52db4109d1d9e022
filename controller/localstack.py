"""Run the reference layout (``haproxy/``, ``sentinel/``) as local processes.

What it does: starts, for every master group of a :class:`Layout`, two ``redis-server`` nodes
(``<group>a`` master, ``<group>b`` replica), ``Layout.sentinels`` ``redis-sentinel`` processes and
one ``haproxy``, all as plain child processes of the caller (``subprocess.Popen``, foreground,
``daemonize no``). Each Redis node and each sentinel listens on its own loopback address
(127.0.0.2, 127.0.0.3, ... and 127.0.0.20, ...) with one shared port, as containers would; HAProxy's
frontends and stats page bind 127.0.0.1. The configs are the shipped files with only hostnames,
ports, the admin socket path and a few process-local lines (bind address, dir, log) substituted, so
what runs here is what ships. Every process has its own directory with its config and log file
inside the stack's workdir. Used by the ``demo`` command and by every integration test fixture.

What it must not do: stop anything it did not start (processes are signalled by the PID of the
``Popen`` that started them, never by name: no pkill/killall); daemonize or detach processes it
cannot track; synchronise with fixed sleeps (every wait polls a condition until a deadline and
raises :class:`StackTimeout` naming what it waited for); write anywhere outside its workdir (except
a short temporary directory for the admin socket when the workdir path is too long for a unix
socket); run a sentinel on the shipped config (Sentinel rewrites its file: each runs on a copy);
leave processes behind (``stop()`` is idempotent, is called when ``start()`` fails half way, and an
``atexit`` hook stops every stack still running).

Stdlib only: Redis and Sentinel are queried with a minimal RESP2 client (:func:`resp_command`).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

REPO_ROOT = Path(__file__).resolve().parent.parent
HAPROXY_CONFIG = REPO_ROOT / "haproxy" / "haproxy.cfg"
HAPROXY_CLASSIC_CONFIG = REPO_ROOT / "haproxy" / "haproxy-classic.cfg"
REDIS_CONFIG = REPO_ROOT / "sentinel" / "redis.conf"
SENTINEL_CONFIG = REPO_ROOT / "sentinel" / "sentinel.conf"

#: Port and loopback address the shipped files use (container names are the hosts).
SHIPPED_REDIS_PORT = 6379
SHIPPED_SENTINEL_PORT = 26379

#: Ports that :func:`free_port` picks from: below Linux's ephemeral range (32768-60999), so a
#: port chosen here cannot be grabbed meanwhile by the source port of an outgoing connection.
PORT_RANGE = (20000, 32000)

#: A unix socket path must fit in sun_path (108 bytes including the NUL).
_MAX_UNIX_PATH = 100

_POLL_S = 0.02
_STOP_GRACE_S = 5.0

Role = Literal["master", "replica"]


# --------------------------------------------------------------------------- errors


class LocalStackError(RuntimeError):
    """Something in the local stack failed (a process died, a config did not render...)."""


class PortInUseError(LocalStackError):
    """A port the stack needs is already taken on one of its addresses."""

    def __init__(self, host: str, port: int, what: str) -> None:
        super().__init__(f"port {port} on {host} is already in use (needed by {what})")
        self.host = host
        self.port = port
        self.what = what


class StackTimeout(LocalStackError):
    """A bounded wait ran out before its condition held."""


class RespError(Exception):
    """A Redis/Sentinel error reply (``-ERR ...``)."""


class ConnectionClosed(ConnectionError):
    """The peer closed the connection (EOF) before a full reply."""


# --------------------------------------------------------------------------- ports


def port_is_free(host: str, port: int) -> bool:
    """Whether a listener could bind ``host:port`` now (with SO_REUSEADDR, as servers do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            s.listen(1)
        except OSError:
            return False
    return True


def check_port_free(host: str, port: int, what: str) -> None:
    """Raise :class:`PortInUseError` naming the port and the address if it is taken."""
    if not port_is_free(host, port):
        raise PortInUseError(host, port, what)


def free_port(hosts: list[str], count: int = 1, *, exclude: frozenset[int] = frozenset()) -> int:
    """First port of ``count`` consecutive TCP ports free on every address in ``hosts``.

    Candidates are drawn at random from :data:`PORT_RANGE` so that concurrent stacks rarely
    collide (a race with another process binding the port meanwhile remains possible; ``start()``
    then fails with :class:`PortInUseError`).
    """
    lo, hi = PORT_RANGE
    rng = random.Random()
    for _ in range(2000):
        first = rng.randrange(lo, hi - count)
        ports = range(first, first + count)
        if any(p in exclude for p in ports):
            continue
        if all(port_is_free(h, p) for p in ports for h in hosts):
            return first
    raise LocalStackError(f"no {count} consecutive free port(s) on {hosts} in {PORT_RANGE}")


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Node:
    """One Redis node of the layout."""

    name: str  # "redis1a"
    group: str  # "redis1"
    host: str  # "127.0.0.2"
    port: int
    initial_role: Role

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)


@dataclass(frozen=True)
class Layout:
    """Addresses, ports and timings of a local stack (defaults = the shipped files)."""

    groups: tuple[str, ...] = ("redis1", "redis2", "redis3")
    redis_port: int = 6379
    sentinel_port: int = 26379
    first_frontend_port: int = 5000  # group i: write = first + 2*i, read = first + 2*i + 1
    stats_port: int = 9000
    down_after_ms: int = 2000  # substituted into the sentinel config
    failover_timeout_ms: int = 10000
    first_node_ip: int = 2  # 127.0.0.2 ...
    first_sentinel_ip: int = 20
    haproxy_config: Path = HAPROXY_CONFIG  # or HAPROXY_CLASSIC_CONFIG
    sentinels: int = 3
    redis_config: Path = REDIS_CONFIG
    sentinel_config: Path = SENTINEL_CONFIG
    #: Non-empty: every node gets ``requirepass``/``masterauth`` and every sentinel
    #: ``sentinel auth-pass <group>`` with it (as compose/docker-compose.yml does).
    redis_password: str = field(default="", repr=False)
    #: Non-empty: every sentinel gets ``requirepass`` (shared: sentinels use it with each other).
    sentinel_password: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not self.groups or len(set(self.groups)) != len(self.groups):
            raise ValueError(f"groups must be non-empty and unique: {self.groups}")
        if self.sentinels < 1:
            raise ValueError("at least one sentinel is needed")
        last_node_ip = self.first_node_ip + 2 * len(self.groups) - 1
        sentinel_ips = range(self.first_sentinel_ip, self.first_sentinel_ip + self.sentinels)
        if self.first_node_ip < 2 or last_node_ip > 254 or sentinel_ips[-1] > 254:
            raise ValueError("loopback addresses must stay within 127.0.0.2-127.0.0.254")
        if set(range(self.first_node_ip, last_node_ip + 1)) & set(sentinel_ips):
            raise ValueError("node and sentinel loopback addresses overlap")

    @classmethod
    def for_tests(cls, **overrides: object) -> Layout:
        """A layout whose ports are all currently free (so tests run beside another stack).

        ``overrides`` are any other :class:`Layout` fields (e.g. ``groups``, ``haproxy_config``).
        """
        base = dataclasses.replace(cls(), **overrides)  # type: ignore[arg-type]
        node_hosts = [n.host for n in base.nodes().values()]
        taken: set[int] = set()
        redis_port = free_port(node_hosts)
        taken.add(redis_port)
        sentinel_port = free_port(base.sentinel_hosts(), exclude=frozenset(taken))
        taken.add(sentinel_port)
        first_frontend = free_port(
            ["127.0.0.1"], count=2 * len(base.groups), exclude=frozenset(taken)
        )
        taken.update(range(first_frontend, first_frontend + 2 * len(base.groups)))
        stats_port = free_port(["127.0.0.1"], exclude=frozenset(taken))
        return dataclasses.replace(
            base,
            redis_port=redis_port,
            sentinel_port=sentinel_port,
            first_frontend_port=first_frontend,
            stats_port=stats_port,
        )

    def nodes(self) -> dict[str, Node]:
        """Every node, by name, in group order (``<group>a`` master, ``<group>b`` replica)."""
        out: dict[str, Node] = {}
        for i, group in enumerate(self.groups):
            roles: tuple[tuple[str, Role], ...] = (("a", "master"), ("b", "replica"))
            for j, (suffix, role) in enumerate(roles):
                host = f"127.0.0.{self.first_node_ip + 2 * i + j}"
                out[group + suffix] = Node(group + suffix, group, host, self.redis_port, role)
        return out

    def sentinel_hosts(self) -> list[str]:
        return [f"127.0.0.{self.first_sentinel_ip + i}" for i in range(self.sentinels)]

    def write_port(self, group: str) -> int:
        return self.first_frontend_port + 2 * self.groups.index(group)

    def read_port(self, group: str) -> int:
        return self.write_port(group) + 1


# --------------------------------------------------------------------------- config rendering

_SECTION_RE = re.compile(
    r"^(global|defaults|frontend|backend|listen|resolvers|peers|userlist|program|ring|"
    r"http-errors|cache|mailers)\b\s*(\S*)"
)
_BIND_RE = re.compile(r"^(\s+bind\s+)\S*?:(\d+)(.*)$")
_SOCKET_RE = re.compile(r"^(\s+stats\s+socket\s+)(\S+)(.*)$")
_SERVER_RE = re.compile(r"^(\s+server\s+\S+\s+)(\S+?):(\d+)(.*)$")
_GROUP_SECTION_RE = re.compile(r"^(.+)_(write|read|master|replicas)$")
#: haproxy-redis-ha.cfg: one Sentinel-vote backend per node (``check_if_redis1a_is_master``).
_NODE_CHECK_SECTION_RE = re.compile(r"^check_if_(.+)[a-z]_is_master$")
#: Sentinel server lines name ``sentinel1``, ``sentinel2``... (1-based, compose names).
_SENTINEL_HOST_RE = re.compile(r"^sentinel(\d+)$")
#: ``tcp-check expect string redis1a``: an expected reply naming a node (becomes its address).
_EXPECT_RE = re.compile(r"^(\s+tcp-check\s+expect\s+string\s+)([^\s\\]+)(.*)$")


def _group_of_section(name: str) -> str | None:
    m = _NODE_CHECK_SECTION_RE.match(name) or _GROUP_SECTION_RE.match(name)
    return m.group(1) if m else None


def render_haproxy_config(
    layout: Layout, socket_path: Path, template: Path | None = None
) -> str:
    """The shipped HAProxy config with local addresses, ports and socket path substituted.

    Frontend/backend sections of groups not in ``layout.groups`` are dropped.
    """
    text = (template or layout.haproxy_config).read_text()
    nodes = layout.nodes()
    sections: list[tuple[str, str, list[str]]] = []  # (kind, name, lines)
    pending: list[str] = []  # comments/blank lines: attached to the next section
    current: list[str] | None = None
    for line in text.splitlines():
        m = _SECTION_RE.match(line)
        if m:
            current = [*pending, line]
            pending = []
            sections.append((m.group(1), m.group(2), current))
        elif current is None or (not line.strip() or line.startswith("#")):
            pending.append(line)
        else:
            current.extend(pending)
            pending = []
            current.append(line)
    seen: set[tuple[str, str]] = set()
    out: list[str] = []
    for kind, name, lines in sections:
        group = _group_of_section(name) if kind in ("frontend", "backend") else None
        if group is not None and group not in layout.groups:
            continue
        for line in lines:
            line = _render_haproxy_line(layout, nodes, kind, name, group, socket_path, line)
            out.append(line)
        if group is not None:
            seen.add((kind, name))
    out.extend(pending)
    for group in layout.groups:
        for kind, suffix in (("frontend", "write"), ("frontend", "read"), ("backend", "master"),
                             ("backend", "replicas")):
            if (kind, f"{group}_{suffix}") not in seen:
                raise LocalStackError(
                    f"{layout.haproxy_config}: no '{kind} {group}_{suffix}' section"
                )
    return "\n".join(out) + "\n"


def _render_haproxy_line(
    layout: Layout,
    nodes: dict[str, Node],
    kind: str,
    name: str,
    group: str | None,
    socket_path: Path,
    line: str,
) -> str:
    if line.lstrip().startswith("#"):
        return line
    m = _BIND_RE.match(line)
    if m:
        if kind == "frontend" and group is not None:
            port = layout.write_port(group) if name.endswith("_write") else layout.read_port(group)
        elif kind == "listen" and name == "stats":
            port = layout.stats_port
        else:
            raise LocalStackError(f"don't know which local port to give '{kind} {name}'")
        return f"{m.group(1)}127.0.0.1:{port}{m.group(3)}"
    m = _SOCKET_RE.match(line)
    if m:
        return f"{m.group(1)}{socket_path}{m.group(3)}"
    m = _EXPECT_RE.match(line)
    if m and m.group(2) in nodes:
        return f"{m.group(1)}{nodes[m.group(2)].host}{m.group(3)}"
    m = _SERVER_RE.match(line)
    s = _SENTINEL_HOST_RE.match(m.group(2)) if m else None
    if m and s and int(m.group(3)) == SHIPPED_SENTINEL_PORT:
        index = int(s.group(1)) - 1
        if not 0 <= index < layout.sentinels:
            raise LocalStackError(f"server line names a sentinel the layout does not have "
                                  f"({layout.sentinels} sentinels): {line.strip()}")
        return f"{m.group(1)}{layout.sentinel_hosts()[index]}:{layout.sentinel_port}{m.group(4)}"
    if m:
        host, port = m.group(2), int(m.group(3))
        node = nodes.get(host)
        if node is None or port != SHIPPED_REDIS_PORT:
            raise LocalStackError(f"server line with unknown node {host}:{port}: {line.strip()}")
        return f"{m.group(1)}{node.host}:{node.port}{m.group(4)}"
    return line


def _quote(path: Path) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_redis_config(layout: Layout, node: Node, node_dir: Path) -> str:
    """The shipped redis.conf with the port substituted and the process-local lines appended."""
    text = layout.redis_config.read_text()
    text, n = re.subn(
        rf"^port {SHIPPED_REDIS_PORT}$", f"port {node.port}", text, flags=re.MULTILINE
    )
    if n != 1:
        raise LocalStackError(f"{layout.redis_config}: expected one 'port {SHIPPED_REDIS_PORT}'")
    return text + (
        "\n# ---- added by controller/localstack.py for a local process ----\n"
        f"bind {node.host}\n"
        # Outgoing connections (replica -> master) from the node's own address, so that the
        # master, and through it Sentinel, sees each replica at its real address.
        f"bind-source-addr {node.host}\n"
        f"dir {_quote(node_dir)}\n"
        'logfile ""\n'
        "daemonize no\n"
        + (
            f"requirepass {layout.redis_password}\nmasterauth {layout.redis_password}\n"
            if layout.redis_password
            else ""
        )
    )


def render_sentinel_config(layout: Layout, index: int, sentinel_dir: Path) -> str:
    """The shipped sentinel.conf for sentinel ``index``, with local addresses and timings."""
    nodes = layout.nodes()
    host = layout.sentinel_hosts()[index]
    out: list[str] = []
    monitored: set[str] = set()
    port_done = False
    for line in layout.sentinel_config.read_text().splitlines():
        words = line.split()
        if words[:1] == ["port"]:
            if words[1:] != [str(SHIPPED_SENTINEL_PORT)]:
                raise LocalStackError(f"{layout.sentinel_config}: unexpected '{line}'")
            out.append(f"port {layout.sentinel_port}")
            port_done = True
            continue
        if len(words) >= 3 and words[0] == "sentinel" and not line.startswith("#"):
            directive, group = words[1], words[2]
            if directive in ("monitor", "down-after-milliseconds", "failover-timeout",
                             "parallel-syncs", "auth-pass", "auth-user", "notification-script",
                             "client-reconfig-script", "config-epoch", "leader-epoch",
                             "known-replica", "known-sentinel", "rename-command"):
                if group not in layout.groups:
                    continue
                if directive == "monitor":
                    _, _, _, master, port, quorum = words
                    node = nodes.get(master)
                    if node is None or int(port) != SHIPPED_REDIS_PORT:
                        raise LocalStackError(f"monitor of unknown node {master}:{port}")
                    q = min(int(quorum), layout.sentinels)
                    line = f"sentinel monitor {group} {node.host} {node.port} {q}"
                    monitored.add(group)
                elif directive == "down-after-milliseconds":
                    line = f"sentinel down-after-milliseconds {group} {layout.down_after_ms}"
                elif directive == "failover-timeout":
                    line = f"sentinel failover-timeout {group} {layout.failover_timeout_ms}"
        out.append(line)
    missing = set(layout.groups) - monitored
    if missing or not port_done:
        raise LocalStackError(
            f"{layout.sentinel_config}: no 'port' line or no monitor for {sorted(missing)}"
        )
    out += [
        "",
        "# ---- added by controller/localstack.py for a local process ----",
        f"bind {host}",
        # Connections to masters/replicas/other sentinels leave from this sentinel's address, so
        # the address it announces in its hellos is its own (all sentinels share one port).
        f"bind-source-addr {host}",
        f"dir {_quote(sentinel_dir)}",
        'logfile ""',
        "daemonize no",
    ]
    if layout.sentinel_password:
        out.append(f"requirepass {layout.sentinel_password}")
    if layout.redis_password:
        out += [f"sentinel auth-pass {g} {layout.redis_password}" for g in layout.groups]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- RESP client


def resp_command(
    host: str, port: int, *args: str | int, timeout_s: float = 1.0, password: str | None = None
) -> object:
    """Send one command on a fresh connection and return the decoded RESP2 reply.

    Bulk strings become ``str``, integers ``int``, arrays ``list``, nil ``None``; an error reply
    raises :class:`RespError`. Connection problems raise ``OSError``. With ``password`` an
    ``AUTH`` goes first on the same connection (its error reply raises :class:`RespError`).
    """
    payload = [encode_command("AUTH", password)] if password else []
    payload.append(encode_command(*args))
    with socket.create_connection((host, port), timeout=timeout_s) as s:
        s.sendall(b"".join(payload))
        with s.makefile("rb") as f:
            if password:
                parse_reply(f.readline, f.read)
            return parse_reply(f.readline, f.read)


def encode_command(*args: str | int) -> bytes:
    """One command as a RESP2 array of bulk strings."""
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def parse_reply(readline: Callable[[], bytes], read: Callable[[int], bytes]) -> object:
    """Read one RESP2 reply (decoded as in :func:`resp_command`) from a buffered stream.

    An error reply raises :class:`RespError`; EOF before a full reply :class:`ConnectionClosed`.
    """
    line = readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionClosed("connection closed in the middle of a reply")
    kind, rest = line[:1], line[1:-2].decode()
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RespError(rest)
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = read(n + 2)
        if len(data) != n + 2:
            raise ConnectionClosed("connection closed in the middle of a reply")
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [parse_reply(readline, read) for _ in range(n)]
    raise ConnectionError(f"unexpected RESP line {line!r}")


def _pairs(reply: object) -> dict[str, str]:
    if not isinstance(reply, list):
        raise RespError(f"expected a flat field/value list, got {reply!r}")
    return {str(k): str(v) for k, v in zip(reply[::2], reply[1::2], strict=True)}


def _info(reply: object) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in str(reply).splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            out[k] = v
    return out


# --------------------------------------------------------------------------- processes


def _find_binary(name: str, fallback: str) -> str:
    return shutil.which(name) or fallback


REDIS_SERVER = _find_binary("redis-server", "/usr/bin/redis-server")
HAPROXY = _find_binary("haproxy", "/usr/sbin/haproxy")


def stop_process(p: subprocess.Popen[bytes], grace_s: float = _STOP_GRACE_S) -> bool:
    """Stop a child we started, by its PID: SIGTERM, wait up to ``grace_s``, then SIGKILL and
    reap it. True if it exited without SIGKILL (or had already exited)."""
    if p.poll() is not None:
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(p.pid, signal.SIGTERM)
    try:
        p.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)
        p.wait(_STOP_GRACE_S)
        return False
    return True


@dataclass
class _Proc:
    name: str
    argv: list[str]
    cwd: Path
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    paused: bool = False

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None and self.popen.poll() is None else None

    def alive(self) -> bool:
        return self.pid is not None

    def start(self) -> None:
        if self.alive():
            raise LocalStackError(f"{self.name} is already running (pid {self.pid})")
        self.cwd.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as logf:
            logf.write(f"\n==== localstack: starting {' '.join(self.argv)}\n".encode())
            logf.flush()
            self.popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                close_fds=True,
                # Own session: a Ctrl-C in the terminal reaches only the Python parent, which
                # then stops the stack in order.
                start_new_session=True,
            )
        self.paused = False

    def signal(self, sig: int) -> None:
        pid = self.pid
        if pid is None:
            raise LocalStackError(f"{self.name} is not running")
        os.kill(pid, sig)
        if sig == signal.SIGSTOP:
            self.paused = True
        elif sig == signal.SIGCONT:
            self.paused = False

    def wait_exit(self, deadline: float) -> bool:
        """Reap the process; True if it exited before ``deadline``."""
        if self.popen is None:
            return True
        try:
            self.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
        return True

    def terminate(self, grace_s: float = _STOP_GRACE_S) -> None:
        """SIGTERM (and SIGCONT if paused), wait up to ``grace_s``, then SIGKILL and reap."""
        self.send_term()
        self.finish_stop(time.monotonic() + grace_s)

    def send_term(self) -> None:
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)  # a stopped process only acts on SIGTERM once resumed
        self.paused = False

    def finish_stop(self, deadline: float) -> None:
        if self.popen is None:
            return
        if not self.wait_exit(deadline):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGKILL)
            if not self.wait_exit(time.monotonic() + _STOP_GRACE_S):
                raise LocalStackError(f"{self.name} (pid {self.popen.pid}) survived SIGKILL")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


_LIVE_STACKS: set[LocalStack] = set()


@atexit.register
def _stop_all_stacks() -> None:
    for stack in list(_LIVE_STACKS):
        with contextlib.suppress(Exception):
            stack.stop()


# --------------------------------------------------------------------------- the stack


@dataclass(eq=False)
class LocalStack:
    """The reference layout as local processes in ``workdir``. Use as a context manager."""

    workdir: Path
    layout: Layout = field(default_factory=Layout)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        self.nodes: dict[str, Node] = self.layout.nodes()
        self.sentinel_addrs: list[tuple[str, int]] = [
            (h, self.layout.sentinel_port) for h in self.layout.sentinel_hosts()
        ]
        hdir = self.workdir / "haproxy"
        self._socket_tmpdir: Path | None = None
        sock = hdir / "admin.sock"
        if len(str(sock)) > _MAX_UNIX_PATH:
            self._socket_tmpdir = Path(tempfile.mkdtemp(prefix="shx-"))
            sock = self._socket_tmpdir / "admin.sock"
        self.haproxy_socket: Path = sock
        self.haproxy_config_path: Path = hdir / "haproxy.cfg"
        self._nodes: dict[str, _Proc] = {
            name: _Proc(name, [], self.workdir / name, self.workdir / name / f"{name}.log")
            for name in self.nodes
        }
        self._sentinels: list[_Proc] = [
            _Proc(
                f"sentinel{i}",
                [REDIS_SERVER, str(self.workdir / f"sentinel{i}" / "sentinel.conf"), "--sentinel"],
                self.workdir / f"sentinel{i}",
                self.workdir / f"sentinel{i}" / f"sentinel{i}.log",
            )
            for i in range(self.layout.sentinels)
        ]
        self._haproxy = _Proc(
            "haproxy", [HAPROXY, "-db", "-f", str(self.haproxy_config_path)], hdir,
            hdir / "haproxy.log",
        )

    # ----------------------------------------------------------------- ports / addresses

    def write_port(self, group: str) -> int:
        return self.layout.write_port(group)

    def read_port(self, group: str) -> int:
        return self.layout.read_port(group)

    def master_of(self, group: str) -> Node:
        """The node that starts as the group's master (``<group>a``)."""
        return self.nodes[group + "a"]

    def check_ports(self) -> None:
        """Raise :class:`PortInUseError` if any port the stack binds is taken."""
        for node in self.nodes.values():
            check_port_free(node.host, node.port, f"redis node {node.name}")
        for i, (host, port) in enumerate(self.sentinel_addrs):
            check_port_free(host, port, f"sentinel{i}")
        for group in self.layout.groups:
            check_port_free("127.0.0.1", self.write_port(group), f"haproxy {group}_write")
            check_port_free("127.0.0.1", self.read_port(group), f"haproxy {group}_read")
        check_port_free("127.0.0.1", self.layout.stats_port, "haproxy stats")

    # ----------------------------------------------------------------- lifecycle

    def start(self, timeout_s: float = 30) -> None:
        """Start nodes, sentinels and HAProxy; return when all are ready. Stops all on failure.

        Ready means: every replica has ``master_link_status:up``; every sentinel knows every
        group with its initial master, ``num-slaves >= 1`` and ``num-other-sentinels ==
        sentinels - 1``; HAProxy's admin socket answers ``show info`` with the started PID.
        """
        deadline = time.monotonic() + timeout_s
        _LIVE_STACKS.add(self)
        try:
            self.check_ports()
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._write_haproxy_config()
            self._check_haproxy_config()
            for name in self.nodes:
                self._start_node_proc(name)
            for name in self.nodes:
                self._wait_ping(self._nodes[name], self.nodes[name].addr, deadline)
            for node in self.nodes.values():
                if node.initial_role == "replica":
                    self._wait_replica_linked(node, deadline)
            for i in range(self.layout.sentinels):
                sdir = self.workdir / f"sentinel{i}"
                sdir.mkdir(parents=True, exist_ok=True)
                (sdir / "sentinel.conf").write_text(
                    render_sentinel_config(self.layout, i, sdir)
                )
                self._sentinels[i].start()
            for i in range(self.layout.sentinels):
                self._wait_sentinel_ready(i, deadline)
            self._start_haproxy(deadline)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every process by PID (SIGTERM, bounded wait, SIGKILL). Idempotent."""
        procs = [self._haproxy, *self._sentinels, *self._nodes.values()]
        for p in procs:
            p.send_term()
        deadline = time.monotonic() + _STOP_GRACE_S
        errors: list[str] = []
        for p in procs:
            try:
                p.finish_stop(deadline)
            except LocalStackError as e:
                errors.append(str(e))
        _LIVE_STACKS.discard(self)
        if self._socket_tmpdir is not None:
            shutil.rmtree(self._socket_tmpdir, ignore_errors=True)  # recreated on a restart
        if errors:
            raise LocalStackError("; ".join(errors))

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def pids(self) -> list[int]:
        """PIDs of every child process of this stack that is still running."""
        procs = [self._haproxy, *self._sentinels, *self._nodes.values()]
        return [pid for p in procs if (pid := p.pid) is not None]

    def log_path(self, name: str) -> Path:
        """Log file of ``redis1a``..., ``sentinel0``... or ``haproxy``."""
        return self._proc(name).log

    # ----------------------------------------------------------------- redis nodes

    def node_pid(self, name: str) -> int | None:
        return self._nodes[name].pid

    def kill_node(self, name: str, sig: int = signal.SIGKILL, timeout_s: float = 15) -> None:
        """Send ``sig`` to a node; for SIGKILL/SIGTERM/SIGINT/SIGQUIT wait until it has exited."""
        self._kill(self._nodes[name], sig, timeout_s)

    def start_node(self, name: str, timeout_s: float = 10) -> None:
        """(Re)start a node from its ORIGINAL config and arguments; wait until it answers PING.

        Sentinel may have rewritten the node's config (REPLICAOF + CONFIG REWRITE): it is rendered
        afresh, so an old master comes back as a master, as a restarted container would.
        """
        self._start_node_proc(name)
        self._wait_ping(self._nodes[name], self.nodes[name].addr, time.monotonic() + timeout_s)

    def pause_node(self, name: str) -> None:
        """SIGSTOP the node (it keeps its sockets but answers nothing)."""
        self._nodes[name].signal(signal.SIGSTOP)

    def resume_node(self, name: str) -> None:
        self._nodes[name].signal(signal.SIGCONT)

    def redis_command(self, name: str, *args: str | int, timeout_s: float = 1.0) -> object:
        """One command to node ``name`` (see :func:`resp_command`)."""
        node = self.nodes[name]
        return resp_command(node.host, node.port, *args, timeout_s=timeout_s,
                            password=self.layout.redis_password or None)

    def role(self, name: str) -> str:
        """``master`` or ``slave`` as the node itself reports (``INFO replication``)."""
        return _info(self.redis_command(name, "INFO", "replication")).get("role", "?")

    # ----------------------------------------------------------------- sentinels

    def sentinel_pid(self, i: int) -> int | None:
        return self._sentinels[i].pid

    def kill_sentinel(self, i: int, sig: int = signal.SIGKILL, timeout_s: float = 15) -> None:
        self._kill(self._sentinels[i], sig, timeout_s)

    def start_sentinel(self, i: int, timeout_s: float = 10) -> None:
        """Restart sentinel ``i`` on its existing (rewritten) config copy; wait for PING."""
        self._sentinels[i].start()
        self._wait_ping(self._sentinels[i], self.sentinel_addrs[i], time.monotonic() + timeout_s)

    def pause_sentinel(self, i: int) -> None:
        self._sentinels[i].signal(signal.SIGSTOP)

    def resume_sentinel(self, i: int) -> None:
        self._sentinels[i].signal(signal.SIGCONT)

    def sentinel_command(self, i: int, *args: str | int, timeout_s: float = 1.0) -> object:
        host, port = self.sentinel_addrs[i]
        return resp_command(host, port, *args, timeout_s=timeout_s,
                            password=self.layout.sentinel_password or None)

    def sentinel_master(self, i: int, group: str) -> dict[str, str]:
        """``SENTINEL MASTER group`` of sentinel ``i`` as a dict of strings."""
        return _pairs(self.sentinel_command(i, "SENTINEL", "MASTER", group))

    def master_addr(self, i: int, group: str) -> tuple[str, int] | None:
        """``SENTINEL GET-MASTER-ADDR-BY-NAME`` of sentinel ``i``."""
        reply = self.sentinel_command(i, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", group)
        if not isinstance(reply, list):
            return None
        return (str(reply[0]), int(str(reply[1])))

    def node_at(self, host: str, port: int) -> Node | None:
        """The node listening on ``host:port``, if any."""
        return next((n for n in self.nodes.values() if n.addr == (host, port)), None)

    # ----------------------------------------------------------------- haproxy

    @property
    def haproxy_pid(self) -> int | None:
        return self._haproxy.pid

    def restart_haproxy(self, timeout_s: float = 10) -> None:
        """Stop HAProxy by PID and start it again from its config; wait for its socket.

        A plain restart (``-db``, no master-worker reload): all runtime state (maint/ready set
        over the admin socket) is lost and every server is back to ``disabled`` from the config.
        """
        self._haproxy.terminate()
        self._start_haproxy(time.monotonic() + timeout_s)

    def stop_haproxy(self) -> None:
        self._haproxy.terminate()

    def start_haproxy(self, timeout_s: float = 10) -> None:
        self._start_haproxy(time.monotonic() + timeout_s)

    def pause_haproxy(self) -> None:
        self._haproxy.signal(signal.SIGSTOP)

    def resume_haproxy(self) -> None:
        self._haproxy.signal(signal.SIGCONT)

    def haproxy_command(self, cmd: str, timeout_s: float = 5.0) -> str:
        """Send one command line on a fresh connection to the admin socket; return the reply."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(str(self.haproxy_socket))
            s.sendall(cmd.rstrip("\n").encode() + b"\n")
            chunks: list[bytes] = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    # ----------------------------------------------------------------- internals

    def _proc(self, name: str) -> _Proc:
        if name == "haproxy":
            return self._haproxy
        if name in self._nodes:
            return self._nodes[name]
        for p in self._sentinels:
            if p.name == name:
                return p
        raise KeyError(name)

    def _kill(self, proc: _Proc, sig: int, timeout_s: float) -> None:
        proc.signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            if proc.paused or sig != signal.SIGKILL:
                with contextlib.suppress(ProcessLookupError, LocalStackError):
                    proc.signal(signal.SIGCONT)
            if not proc.wait_exit(time.monotonic() + timeout_s):
                raise StackTimeout(f"{proc.name} did not exit within {timeout_s} s of signal {sig}")

    def _start_node_proc(self, name: str) -> None:
        node = self.nodes[name]
        proc = self._nodes[name]
        proc.cwd.mkdir(parents=True, exist_ok=True)
        conf = proc.cwd / "redis.conf"
        conf.write_text(render_redis_config(self.layout, node, proc.cwd))
        argv = [REDIS_SERVER, str(conf)]
        if node.initial_role == "replica":
            master = self.master_of(node.group)
            argv += ["--replicaof", master.host, str(master.port)]
        proc.argv = argv
        proc.start()

    def _write_haproxy_config(self) -> None:
        self.haproxy_config_path.parent.mkdir(parents=True, exist_ok=True)
        self.haproxy_config_path.write_text(
            render_haproxy_config(self.layout, self.haproxy_socket)
        )

    def _check_haproxy_config(self) -> None:
        res = subprocess.run(
            [HAPROXY, "-c", "-q", "-f", str(self.haproxy_config_path)],
            capture_output=True, text=True, timeout=30, check=False,
        )
        if res.returncode != 0:
            raise LocalStackError(
                f"haproxy -c failed on {self.haproxy_config_path}:\n{res.stdout}{res.stderr}"
            )

    def _start_haproxy(self, deadline: float) -> None:
        self.haproxy_socket.parent.mkdir(parents=True, exist_ok=True)
        self._write_haproxy_config()
        self._haproxy.start()
        proc = self._haproxy

        def ready() -> bool:
            info = self.haproxy_command("show info", timeout_s=1.0)
            return f"\nPid: {proc.pid}\n" in info

        self._wait(f"haproxy admin socket {self.haproxy_socket}", ready, deadline, [proc])

    def _wait_ping(self, proc: _Proc, addr: tuple[str, int], deadline: float) -> None:
        secret = (self.layout.sentinel_password if proc in self._sentinels
                  else self.layout.redis_password)
        password = secret or None
        self._wait(
            f"{proc.name} at {addr[0]}:{addr[1]} to answer PING",
            lambda: resp_command(*addr, "PING", timeout_s=0.5, password=password) == "PONG",
            deadline,
            [proc],
        )

    def _wait_replica_linked(self, node: Node, deadline: float) -> None:
        def linked() -> bool:
            info = _info(self.redis_command(node.name, "INFO", "replication", timeout_s=0.5))
            return info.get("master_link_status") == "up"

        master = self.master_of(node.group)
        self._wait(
            f"replica {node.name} linked to {master.name} (master_link_status:up)",
            linked,
            deadline,
            [self._nodes[node.name], self._nodes[master.name]],
        )

    def _wait_sentinel_ready(self, i: int, deadline: float) -> None:
        want_others = str(self.layout.sentinels - 1)

        def ready() -> bool:
            for group in self.layout.groups:
                m = self.sentinel_master(i, group)
                master = self.master_of(group)
                if (m.get("ip"), m.get("port")) != (master.host, str(master.port)):
                    return False
                if int(m.get("num-slaves", "0")) < 1 or m.get("num-other-sentinels") != want_others:
                    return False
            return True

        self._wait(
            f"sentinel{i} to know every group with its replica and {want_others} other sentinels",
            ready,
            deadline,
            [self._sentinels[i]],
        )

    def _wait(
        self, what: str, cond: Callable[[], bool], deadline: float, watch: list[_Proc]
    ) -> None:
        """Poll ``cond`` until it holds; fail early if a watched process exits."""
        last_error = ""
        while True:
            try:
                if cond():
                    return
                last_error = ""
            except (OSError, RespError, ValueError, KeyError) as e:
                last_error = f" (last error: {e!r})"
            for p in watch:
                if p.popen is not None and p.popen.poll() is not None:
                    raise LocalStackError(
                        f"{p.name} exited with code {p.popen.returncode} while waiting for "
                        f"{what}; log {p.log}:\n{p.log_tail()}"
                    )
            if time.monotonic() >= deadline:
                tails = "\n".join(f"--- {p.name} ({p.log}):\n{p.log_tail(8)}" for p in watch)
                raise StackTimeout(f"timed out waiting for {what}{last_error}\n{tails}")
            time.sleep(_POLL_S)
