"""Run the reference layout (the shipped ``haproxy/``, ``sentinel/`` files) as local processes.

What it does: starts, for every master group of a :class:`Layout`, two ``redis-server`` nodes
(``<group>a`` master, ``<group>b`` replica), ``Layout.sentinels`` ``redis-sentinel`` processes and
one ``haproxy`` (with ``Layout.haproxy_master_worker``: ``-W``, a master and its workers), all
as plain child processes of the caller (``subprocess.Popen``, foreground, ``daemonize no``).
Each Redis node and each sentinel listens on its own loopback address (127.0.0.2, 127.0.0.3, ...
and 127.0.0.20, ...) with one shared port, as containers would; HAProxy's frontends and stats
page bind 127.0.0.1. The configs are the shipped files with only hostnames, ports, the admin
socket path and a few process-local lines (bind address, dir, log) substituted, so what runs here
is what ships. Every process has its own directory with its config and log file
inside the stack's workdir. Used by the ``demo`` command and by every integration test fixture.

What it must not do: stop anything it did not start (processes are signalled by the PID of the
``Popen`` that started them, HAProxy's master-worker set by that PID's process group, never by
name: no pkill/killall); daemonize or detach processes it
cannot track; synchronise with fixed sleeps (every wait polls a condition until a deadline and
raises lab.wait.WaitTimeout naming what it waited for); write anywhere outside its workdir (except
a short temporary directory for the admin socket when the workdir path is too long for a unix
socket); run a sentinel on the shipped config (Sentinel rewrites its file: each runs on a copy);
leave processes behind (``stop()`` is idempotent and is called when ``start()`` fails half way;
lab.procs stops every child still running at exit).

Redis and Sentinel are queried with the lab's RESP client (lab.resp), HAProxy with the daemon's
Runtime API client.
"""

from __future__ import annotations

import contextlib
import dataclasses
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

from controller.haproxy import HAProxyClient, HAProxyError
from controller.model import Address, HAProxyState
from controller.settings import Settings
from lab import resp
from lab.procs import (
    HAPROXY,
    REDIS_SERVER,
    UNSHARE,
    ManagedProcess,
    ProcessError,
    start_haproxy,
)
from lab.wait import NOT_YET, WaitTimeout, wait_until

#: The repository's haproxy/ and sentinel/ directories, reached through symlinks inside the
#: package (lab/shipped-files/), so that a wheel carries them as package data.
SHIPPED = Path(__file__).resolve().parent / "shipped-files"
HAPROXY_CONFIG = SHIPPED / "haproxy" / "haproxy.cfg"
HAPROXY_CLASSIC_CONFIG = SHIPPED / "haproxy" / "haproxy-classic.cfg"
HAPROXY_REDIS_HA_CONFIG = SHIPPED / "haproxy" / "haproxy-redis-ha.cfg"  # the redis-ha chart's way
#: `sentinel-haproxy config`'s output for redis1..3: server slots the controller fills.
HAPROXY_SLOTS_CONFIG = SHIPPED / "haproxy" / "haproxy-slots.cfg"
REDIS_CONFIG = SHIPPED / "sentinel" / "redis.conf"
SENTINEL_CONFIG = SHIPPED / "sentinel" / "sentinel.conf"

#: Port and loopback address the shipped files use (container names are the hosts).
SHIPPED_REDIS_PORT = 6379
SHIPPED_SENTINEL_PORT = 26379

#: Ports that :func:`free_port` picks from: below Linux's ephemeral range (32768-60999), so a
#: port chosen here cannot be grabbed meanwhile by the source port of an outgoing connection.
PORT_RANGE = (20000, 32000)

#: A unix socket path must fit in sun_path (108 bytes including the NUL).
_MAX_UNIX_PATH = 100

#: reload_haproxy: SIGUSR2 is sent again when no new worker answered within this time (one
#: sent in the first few hundred ms after the master's start can be lost).
RELOAD_RESEND_S = 1.0
RELOAD_SETTLED_ASKS = 20  # fresh `show info` in a row that must all name the new worker

Role = Literal["master", "replica"]


# --------------------------------------------------------------------------- errors


class LocalStackError(ProcessError):
    """Something in the local stack failed (a process died, a config did not render...)."""


class PortInUseError(LocalStackError):
    """A port the stack needs is already taken on one of its addresses."""

    def __init__(self, host: str, port: int, what: str) -> None:
        super().__init__(f"port {port} on {host} is already in use (needed by {what})")
        self.host = host
        self.port = port
        self.what = what


# --------------------------------------------------------------------------- ports


def port_is_free(host: str, port: int) -> bool:
    """Whether a listener could bind ``host:port`` now (with SO_REUSEADDR, as servers do)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
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
    hostname: str = ""  # with Layout.hostnames: the name Sentinel and replicas use

    @property
    def addr(self) -> Address:
        return Address(self.host, self.port)

    @property
    def announced(self) -> str:
        """How the configs name it: its hostname when it has one, else its address."""
        return self.hostname or self.host


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
    #: Replicas per group: `<group>b`, `<group>c`... The shipped files name one (`b`); the
    #: rendered HAProxy config repeats the `b` server lines for every further replica.
    replicas: int = 1
    redis_config: Path = REDIS_CONFIG
    sentinel_config: Path = SENTINEL_CONFIG
    #: Non-empty: every node gets ``requirepass``/``masterauth`` and every sentinel
    #: ``sentinel auth-pass <group>`` with it (as compose/docker-compose.yml does).
    redis_password: str = field(default="", repr=False)
    #: Non-empty: every sentinel gets ``requirepass`` (shared: sentinels use it with each other).
    sentinel_password: str = field(default="", repr=False)
    #: Extra lines for every node's redis.conf (e.g. ``min-replicas-to-write 1``), appended
    #: after the shipped file's (the shipped file itself is not changed).
    redis_directives: tuple[str, ...] = ()
    #: Every sentinel also listens on an observer address (:meth:`observer_host`: 127.1.0.N for
    #: 127.0.0.N) that only the lab's instruments use: a partition drill cuts links between
    #: 127.0.0.x addresses, and the drill's own view of Sentinel must survive its cuts.
    observer_aliases: bool = False
    #: Nodes known by hostname (``redis1a.redis.test``...): a hosts file in the workdir, bind-
    #: mounted on /etc/hosts in a private mount namespace of every node and sentinel (the
    #: machine's own hosts file is never touched); sentinels ``announce-hostnames yes``,
    #: nodes ``replica-announce-ip <name>``, replicas ``replicaof <name>``.
    hostnames: bool = False
    #: Everything on ``::1``: nodes and sentinels on one address with their own ports, HAProxy's
    #: frontends and a TCP admin socket (``admin_tcp_port``) on ``[::1]``.
    ipv6: bool = False
    admin_tcp_port: int = 0  # ipv6: HAProxy's admin socket on [::1] for the controller
    #: HAProxy in master-worker mode (``-W``, as the official image runs it): a master process
    #: and a worker; :meth:`LocalStack.reload_haproxy` reloads it (SIGUSR2 to the master). Its
    #: master CLI (``-S``) is ``master.sock`` beside the admin socket, where the controller
    #: looks for it by default (``haproxy_master_socket``), as the shipped compose file has it.
    haproxy_master_worker: bool = False

    def __post_init__(self) -> None:
        if not self.groups or len(set(self.groups)) != len(self.groups):
            raise ValueError(f"groups must be non-empty and unique: {self.groups}")
        if self.sentinels < 1:
            raise ValueError("at least one sentinel is needed")
        if not 1 <= self.replicas <= 24:
            raise ValueError(f"replicas per group must be 1-24, not {self.replicas}")
        last_node_ip = self.first_node_ip + (self.replicas + 1) * len(self.groups) - 1
        sentinel_ips = range(self.first_sentinel_ip, self.first_sentinel_ip + self.sentinels)
        if self.first_node_ip < 2 or last_node_ip > 254 or sentinel_ips[-1] > 254:
            raise ValueError("loopback addresses must stay within 127.0.0.2-127.0.0.254")
        if set(range(self.first_node_ip, last_node_ip + 1)) & set(sentinel_ips):
            raise ValueError("node and sentinel loopback addresses overlap")
        if any("\n" in line or not line.strip() for line in self.redis_directives):
            raise ValueError(f"redis_directives must be non-empty single lines: "
                             f"{self.redis_directives}")

    @classmethod
    def for_tests(cls, **overrides: object) -> Layout:
        """A layout whose ports are all currently free (so tests run beside another stack).

        ``overrides`` are any other :class:`Layout` fields (e.g. ``groups``, ``haproxy_config``).
        """
        base = dataclasses.replace(cls(), **overrides)  # type: ignore[arg-type]
        node_hosts = sorted({n.host for n in base.nodes().values()})
        per_host = len(base.nodes()) if base.ipv6 else 1  # one port per node on ::1
        taken: set[int] = set()
        redis_port = free_port(node_hosts, count=per_host)
        taken.update(range(redis_port, redis_port + per_host))
        sentinel_port = free_port(sorted(set(base.sentinel_hosts() + base.observer_hosts())),
                                  count=base.sentinels if base.ipv6 else 1,
                                  exclude=frozenset(taken))
        taken.update(range(sentinel_port, sentinel_port + base.sentinels))
        fe = [base.frontend_host]
        first_frontend = free_port(fe, count=2 * len(base.groups), exclude=frozenset(taken))
        taken.update(range(first_frontend, first_frontend + 2 * len(base.groups)))
        stats_port = free_port(fe, exclude=frozenset(taken))
        taken.add(stats_port)
        admin = free_port(fe, exclude=frozenset(taken)) if base.ipv6 else 0
        return dataclasses.replace(
            base,
            redis_port=redis_port,
            sentinel_port=sentinel_port,
            first_frontend_port=first_frontend,
            stats_port=stats_port,
            admin_tcp_port=admin,
        )

    @property
    def frontend_host(self) -> str:
        """Where HAProxy's frontends, stats page (and, with ipv6, admin socket) listen."""
        return "::1" if self.ipv6 else "127.0.0.1"

    def nodes(self) -> dict[str, Node]:
        """Every node, by name, in group order (``<group>a`` master, ``<group>b``... replicas)."""
        out: dict[str, Node] = {}
        per_group = self.replicas + 1
        for i, group in enumerate(self.groups):
            for j in range(per_group):
                role: Role = "master" if j == 0 else "replica"
                name = group + "abcdefghijklmnopqrstuvwxyz"[j]
                k = per_group * i + j
                host = "::1" if self.ipv6 else f"127.0.0.{self.first_node_ip + k}"
                port = self.redis_port + (k if self.ipv6 else 0)
                hostname = f"{name}.redis.test" if self.hostnames else ""
                out[name] = Node(name, group, host, port, role, hostname)
        return out

    def sentinel_hosts(self) -> list[str]:
        if self.ipv6:
            return ["::1"] * self.sentinels
        return [f"127.0.0.{self.first_sentinel_ip + i}" for i in range(self.sentinels)]

    def observer_host(self, host: str) -> str:
        """The observer address of a sentinel at ``host`` (127.0.0.N -> 127.1.0.N)."""
        if not host.startswith("127.0.0."):
            raise ValueError(f"not a 127.0.0.x address: {host}")
        return "127.1.0." + host.rsplit(".", 1)[1]

    def observer_hosts(self) -> list[str]:
        """The sentinels' observer addresses (none without ``observer_aliases``)."""
        return [self.observer_host(h) for h in self.sentinel_hosts()] if self.observer_aliases \
            else []
    def sentinel_addrs(self) -> list[Address]:
        """Each sentinel's address (on ::1 each has its own port)."""
        return [Address(h, self.sentinel_port + (i if self.ipv6 else 0))
                for i, h in enumerate(self.sentinel_hosts())]

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
_STATE_FILE_RE = re.compile(r"^(\s+server-state-file\s+)(\S+)(.*)$")
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
    for kind, name, lines in _with_extra_replicas(sections, layout):
        group = _group_of_section(name) if kind in ("frontend", "backend") else None
        if group is not None and group not in layout.groups:
            continue
        for line in lines:
            line = _render_haproxy_line(layout, nodes, kind, name, group, socket_path, line)
            out.append(line)
        if group is not None:
            seen.add((kind, name))
    out.extend(pending)
    settings = Settings()  # the backends the controller looks for, by its default templates
    for group in layout.groups:
        needed = [("frontend", f"{group}_write"), ("frontend", f"{group}_read"),
                  ("backend", settings.write_backend.format(master=group)),
                  ("backend", settings.read_backend.format(master=group))]
        for kind, name in needed:
            if (kind, name) not in seen:
                raise LocalStackError(f"{layout.haproxy_config}: no '{kind} {name}' section")
    return "\n".join(out) + "\n"


def write_haproxy_config(layout: Layout, socket_path: Path, config_path: Path) -> None:
    """The rendered config at `config_path`, and the map files shipped beside the template
    (lease.map: the config names them relative to itself, `default-path config`)."""
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(render_haproxy_config(layout, socket_path))
    for shipped in layout.haproxy_config.parent.glob("*.map"):
        shutil.copyfile(shipped, config_path.parent / shipped.name)


def _with_extra_replicas(
    sections: list[tuple[str, str, list[str]]], layout: Layout
) -> list[tuple[str, str, list[str]]]:
    """The shipped files name one replica per group (`<group>b`): for each further replica
    (`<group>c`...), every section named after `<group>b` is repeated, and every other line
    naming it (server lines, `use-server` rules) is repeated, with the new node's name."""
    if layout.replicas == 1:
        return sections
    renames = [(re.compile(rf"(?<![A-Za-z0-9]){g}b(?![A-Za-z0-9])"),
                [g + "abcdefghijklmnopqrstuvwxyz"[j] for j in range(2, layout.replicas + 1)])
               for g in layout.groups]
    out: list[tuple[str, str, list[str]]] = []
    for kind, name, lines in sections:
        hit = next(((rx, extra) for rx, extra in renames if rx.search(name)), None)
        if hit is not None:
            rx, extra = hit
            out.append((kind, name, lines))
            out += [(kind, rx.sub(node, name), [rx.sub(node, ln) for ln in lines])
                    for node in extra]
            continue
        grown: list[str] = []
        for line in lines:
            grown.append(line)
            if line.lstrip().startswith("#"):
                continue
            for rx, extra in renames:
                if rx.search(line):
                    grown += [rx.sub(node, line) for node in extra]
        out.append((kind, name, grown))
    return out


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
        return f"{m.group(1)}{Address(layout.frontend_host, port)}{m.group(3)}"
    m = _SOCKET_RE.match(line)
    if m:
        tcp = (f"\n{m.group(1)}ipv6@::1:{layout.admin_tcp_port} level admin"
               if layout.admin_tcp_port else "")
        return f"{m.group(1)}{socket_path}{m.group(3)}{tcp}"
    m = _STATE_FILE_RE.match(line)
    if m:  # beside the socket, where the controller keeps it (its default haproxy_state_file)
        return f"{m.group(1)}{socket_path.parent / Path(m.group(2)).name}{m.group(3)}"
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
        return f"{m.group(1)}{layout.sentinel_addrs()[index]}{m.group(4)}"
    if m:
        host, port = m.group(2), int(m.group(3))
        node = nodes.get(host)
        if node is None or port != SHIPPED_REDIS_PORT:
            raise LocalStackError(f"server line with unknown node {host}:{port}: {line.strip()}")
        return f"{m.group(1)}{node.addr}{m.group(4)}"
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
        + (f"replica-announce-ip {node.hostname}\n" if node.hostname else "")
        + (
            f"requirepass {layout.redis_password}\nmasterauth {layout.redis_password}\n"
            if layout.redis_password
            else ""
        )
        + "".join(f"{line}\n" for line in layout.redis_directives)
    )


def render_sentinel_config(layout: Layout, index: int, sentinel_dir: Path) -> str:
    """The shipped sentinel.conf for sentinel ``index``, with local addresses and timings."""
    nodes = layout.nodes()
    me = layout.sentinel_addrs()[index]
    host = me.host
    out: list[str] = []
    monitored: set[str] = set()
    port_done = False
    for line in layout.sentinel_config.read_text().splitlines():
        words = line.split()
        if words[:1] == ["port"]:
            if words[1:] != [str(SHIPPED_SENTINEL_PORT)]:
                raise LocalStackError(f"{layout.sentinel_config}: unexpected '{line}'")
            out.append(f"port {me.port}")
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
                    line = f"sentinel monitor {group} {node.announced} {node.port} {q}"
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
        f"bind {host}" + (f" {layout.observer_host(host)}" if layout.observer_aliases else ""),
        # Connections to masters/replicas/other sentinels leave from this sentinel's address, so
        # the address it announces in its hellos is its own (all sentinels share one port).
        f"bind-source-addr {host}",
        f"dir {_quote(sentinel_dir)}",
        'logfile ""',
        "daemonize no",
    ]
    if layout.hostnames and not any(ln.split() == ["sentinel", "announce-hostnames", "yes"]
                                    for ln in out):
        out.append("sentinel announce-hostnames yes")
    if layout.sentinel_password:
        out.append(f"requirepass {layout.sentinel_password}")
    if layout.redis_password:
        out += [f"sentinel auth-pass {g} {layout.redis_password}" for g in layout.groups]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- the stack


@dataclass(eq=False)
class LocalStack:
    """The reference layout as local processes in ``workdir``. Use as a context manager."""

    workdir: Path
    layout: Layout = field(default_factory=Layout)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        self.nodes: dict[str, Node] = self.layout.nodes()
        self.sentinel_addrs: list[Address] = self.layout.sentinel_addrs()
        #: Where the lab's instruments reach the sentinels: their observer addresses when the
        #: layout has them (never cut by a partition drill), else their own.
        self.observer_sentinel_addrs: list[Address] = [
            Address(h, self.layout.sentinel_port) for h in self.layout.observer_hosts()
        ] or list(self.sentinel_addrs)
        #: Layout.hostnames: the hosts file every node and sentinel sees as /etc/hosts.
        self.hosts_file: Path = self.workdir / "hosts"
        hdir = self.workdir / "haproxy"
        self._socket_tmpdir: Path | None = None
        sock = hdir / "admin.sock"
        if len(str(sock)) > _MAX_UNIX_PATH:
            self._socket_tmpdir = Path(tempfile.mkdtemp(prefix="shx-"))
            sock = self._socket_tmpdir / "admin.sock"
        self.haproxy_socket: Path = sock
        self.haproxy_master_socket: Path = sock.parent / "master.sock"  # with -W only
        self.haproxy_config_path: Path = hdir / "haproxy.cfg"
        self._nodes: dict[str, ManagedProcess] = {
            name: ManagedProcess(name, [], self.workdir / name, self.workdir / name / f"{name}.log")
            for name in self.nodes
        }
        self._sentinels: list[ManagedProcess] = [
            ManagedProcess(
                f"sentinel{i}",
                self._wrap([REDIS_SERVER, str(self.workdir / f"sentinel{i}" / "sentinel.conf"),
                            "--sentinel"]),
                self.workdir / f"sentinel{i}",
                self.workdir / f"sentinel{i}" / f"sentinel{i}.log",
            )
            for i in range(self.layout.sentinels)
        ]
        self._haproxy = ManagedProcess("haproxy", [], hdir, hdir / "haproxy.log")  # not started

    # ----------------------------------------------------------------- ports / addresses

    def write_port(self, group: str) -> int:
        return self.layout.write_port(group)

    def read_port(self, group: str) -> int:
        return self.layout.read_port(group)

    def write_frontend(self, group: str) -> Address:
        return Address(self.layout.frontend_host, self.write_port(group))

    def read_frontend(self, group: str) -> Address:
        return Address(self.layout.frontend_host, self.read_port(group))

    def write_backend(self, group: str) -> str:
        """The write backend's name, from the daemon's default template (as the shipped
        configs name it)."""
        return Settings().write_backend.format(master=group)

    def read_backend(self, group: str) -> str:
        return Settings().read_backend.format(master=group)

    def master_of(self, group: str) -> Node:
        """The node that starts as the group's master (``<group>a``)."""
        return self.nodes[group + "a"]

    def check_ports(self) -> None:
        """Raise :class:`PortInUseError` if any port the stack binds is taken."""
        for node in self.nodes.values():
            check_port_free(node.host, node.port, f"redis node {node.name}")
        for i, a in enumerate(self.sentinel_addrs):
            check_port_free(a.host, a.port, f"sentinel{i}")
        for i, h in enumerate(self.layout.observer_hosts()):
            check_port_free(h, self.layout.sentinel_port, f"sentinel{i} (observer address)")
        for group in self.layout.groups:
            fe = self.layout.frontend_host
            check_port_free(fe, self.write_port(group), f"haproxy {group}_write")
            check_port_free(fe, self.read_port(group), f"haproxy {group}_read")
        check_port_free(self.layout.frontend_host, self.layout.stats_port, "haproxy stats")

    # ----------------------------------------------------------------- lifecycle

    def start(self, timeout_s: float = 30) -> None:
        """Start nodes, sentinels and HAProxy; return when all are ready. Stops all on failure.

        Ready means: every replica has ``master_link_status:up``; every sentinel knows every
        group with its initial master, ``num-slaves >= replicas`` and ``num-other-sentinels ==
        sentinels - 1``; HAProxy's admin socket answers ``show info`` with the started PID.
        """
        deadline = time.monotonic() + timeout_s
        try:
            self.check_ports()
            self.workdir.mkdir(parents=True, exist_ok=True)
            if self.layout.hostnames:
                self._write_hosts()
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
        deadline = time.monotonic() + 5.0
        errors: list[str] = []
        for p in procs:
            try:
                p.finish_stop(deadline)
            except ProcessError as e:
                errors.append(str(e))
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
        """Send a deadly ``sig`` to a node and wait until it has exited."""
        self._nodes[name].kill(sig, timeout_s)

    def start_node(self, name: str, timeout_s: float = 10) -> None:
        """(Re)start a node from its ORIGINAL config and arguments; wait until it answers PING.

        Sentinel may have rewritten the node's config (REPLICAOF + CONFIG REWRITE): it is rendered
        afresh, so an old master comes back as a master, as a restarted container would.
        """
        self._start_node_proc(name)
        self._wait_ping(self._nodes[name], self.nodes[name].addr, time.monotonic() + timeout_s)

    def pause_node(self, name: str) -> None:
        """SIGSTOP the node (it keeps its sockets but answers nothing)."""
        self._nodes[name].send_signal(signal.SIGSTOP)

    def resume_node(self, name: str) -> None:
        self._nodes[name].send_signal(signal.SIGCONT)

    def redis_command(self, name: str, *args: str | int, timeout_s: float = 1.0) -> object:
        """One command to node ``name`` (lab.resp.command)."""
        return resp.command(self.nodes[name].addr, *args, timeout_s=timeout_s,
                            password=self.layout.redis_password or None)

    def role(self, name: str) -> str:
        """``master`` or ``slave`` as the node itself reports (``INFO replication``)."""
        return resp.info_fields(self.redis_command(name, "INFO", "replication")).get("role", "?")

    # ----------------------------------------------------------------- sentinels

    def sentinel_pid(self, i: int) -> int | None:
        return self._sentinels[i].pid

    def kill_sentinel(self, i: int, sig: int = signal.SIGKILL, timeout_s: float = 15) -> None:
        self._sentinels[i].kill(sig, timeout_s)

    def start_sentinel(self, i: int, timeout_s: float = 10) -> None:
        """Restart sentinel ``i`` on its existing (rewritten) config copy; wait for PING."""
        self._sentinels[i].start()
        self._wait_ping(self._sentinels[i], self.sentinel_addrs[i], time.monotonic() + timeout_s)

    def pause_sentinel(self, i: int) -> None:
        self._sentinels[i].send_signal(signal.SIGSTOP)

    def resume_sentinel(self, i: int) -> None:
        self._sentinels[i].send_signal(signal.SIGCONT)

    def sentinel_command(self, i: int, *args: str | int, timeout_s: float = 1.0) -> object:
        return resp.command(self.sentinel_addrs[i], *args, timeout_s=timeout_s,
                            password=self.layout.sentinel_password or None)

    def sentinel_master(self, i: int, group: str) -> dict[str, str]:
        """``SENTINEL MASTER group`` of sentinel ``i`` as a dict of strings."""
        return resp.field_pairs(self.sentinel_command(i, "SENTINEL", "MASTER", group))

    def master_addr(self, i: int, group: str) -> Address | None:
        """``SENTINEL GET-MASTER-ADDR-BY-NAME`` of sentinel ``i``."""
        reply = self.sentinel_command(i, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", group)
        if not isinstance(reply, list):
            return None
        addr = Address(str(reply[0]), int(str(reply[1])))
        named = next((n for n in self.nodes.values()
                      if n.hostname and (n.hostname, n.port) == (addr.host, addr.port)), None)
        return named.addr if named is not None else addr  # a node's name: its address

    def node_at(self, addr: Address | str) -> Node | None:
        """The node listening on ``addr`` (an Address or ``host:port``), if any."""
        if isinstance(addr, str):
            addr = Address.parse(addr)
        return next((n for n in self.nodes.values() if n.addr == addr), None)

    def node_named(self, addr: Address | str) -> str:
        """The name of the node at ``addr``; LocalStackError if none of the stack's."""
        node = self.node_at(addr)
        if node is None:
            raise LocalStackError(f"{addr} is not a node of this local stack")
        return node.name

    # ----------------------------------------------------------------- haproxy

    @property
    def haproxy_pid(self) -> int | None:
        """The PID of the HAProxy process the stack started (in master-worker mode: the
        master's; `show info` names the worker)."""
        return self._haproxy.pid

    def haproxy_pids(self) -> list[int]:
        """Every live HAProxy process of the stack: in master-worker mode its master and every
        worker (old ones too, while a client connection keeps them), else the one process."""
        if self.layout.haproxy_master_worker:
            return self._haproxy.group_pids()
        return [pid] if (pid := self._haproxy.pid) is not None else []

    def haproxy(self, timeout_s: float = 2.0) -> HAProxyClient:
        """A Runtime API client on the stack's admin socket."""
        return HAProxyClient(str(self.haproxy_socket), timeout_s)

    def haproxy_state(self) -> HAProxyState:
        return self.haproxy().state()

    def routable(self) -> dict[str, list[str]]:
        """Backend -> names of the servers HAProxy routes new connections to now."""
        return {
            be: [s.name for s in servers.values() if s.routable]
            for be, servers in self.haproxy_state().backends.items()
        }

    def restart_haproxy(self, timeout_s: float = 10) -> None:
        """Stop HAProxy by PID and start it again from its config; wait for its socket.

        A plain restart (``-db``, no master-worker reload): all runtime state (maint/ready set
        over the admin socket) is lost and every server is back to ``disabled`` from the config.
        """
        self._haproxy.stop()
        self._start_haproxy(time.monotonic() + timeout_s)

    def stop_haproxy(self) -> None:
        self._haproxy.stop()

    def kill_haproxy(self, sig: int = signal.SIGKILL, timeout_s: float = 15) -> None:
        """A crash: `sig` to HAProxy by PID, wait until it is gone (`start_haproxy` brings it
        back from its config, every runtime state lost). In master-worker mode `sig` goes to
        its process group, master and every worker, as a container's end kills every process
        in it."""
        self._haproxy.kill(sig, timeout_s)

    def reload_haproxy(self, timeout_s: float = 10) -> tuple[int, int]:
        """A master-worker reload: SIGUSR2 to HAProxy's master by its PID; wait until `show
        info` (a fresh connection) names a new worker that is not stopping, and then only it
        answers. Returns (old, new) worker PIDs. The old worker serves its established
        connections until they close.

        Needs Layout.haproxy_master_worker. A SIGUSR2 that reaches the master in the first few
        hundred ms after its start can be lost (measured): it is sent again when no new worker
        answers within RELOAD_RESEND_S.
        """
        if not self.layout.haproxy_master_worker:
            raise LocalStackError("reload_haproxy needs Layout.haproxy_master_worker (-W)")
        deadline = time.monotonic() + timeout_s
        old = self.haproxy().info().pid

        def new_worker() -> int | None:
            info = self.haproxy(1.0).info()
            return info.pid if info.pid != old and not info.stopping else None

        while True:
            self._haproxy.send_signal(signal.SIGUSR2)
            attempt = min(deadline, time.monotonic() + RELOAD_RESEND_S)
            try:
                new = self._wait_haproxy(f"a new HAProxy worker (not {old}) after SIGUSR2",
                                         new_worker, attempt)
                break
            except WaitTimeout:
                if time.monotonic() >= deadline:
                    raise

        # The old worker accepts on the inherited sockets until the master has told it to
        # stop, a moment after the new one answers (seen: `show info` named the new worker,
        # the next connection the old one): done when only the new one answers.
        def only_new() -> int | None:
            asks = range(RELOAD_SETTLED_ASKS)
            return new if all(self.haproxy(1.0).info().pid == new for _ in asks) else None

        self._wait_haproxy(f"only the new HAProxy worker {new} answering", only_new, deadline)
        return old, new

    def start_haproxy(self, timeout_s: float = 10) -> None:
        self._start_haproxy(time.monotonic() + timeout_s)

    def pause_haproxy(self) -> None:
        """SIGSTOP HAProxy (in master-worker mode its whole process group: the workers carry
        the traffic)."""
        self._haproxy.send_signal(signal.SIGSTOP, self.layout.haproxy_master_worker)

    def resume_haproxy(self) -> None:
        self._haproxy.send_signal(signal.SIGCONT, self.layout.haproxy_master_worker)

    def haproxy_command(self, cmd: str, timeout_s: float = 5.0) -> str:
        """Send one command line on a fresh connection to the admin socket; return the reply."""
        return self.haproxy(timeout_s).exchange(cmd)

    # ----------------------------------------------------------------- internals

    def _proc(self, name: str) -> ManagedProcess:
        if name == "haproxy":
            return self._haproxy
        if name in self._nodes:
            return self._nodes[name]
        for p in self._sentinels:
            if p.name == name:
                return p
        raise KeyError(name)

    def _start_node_proc(self, name: str, replicaof: Node | bool | None = True) -> None:
        """Start node `name`; `replicaof`: True = as its layout says (a replica of the
        group's first master), a Node = a replica of that one, None/False = a master."""
        node = self.nodes[name]
        proc = self._nodes[name]
        proc.cwd.mkdir(parents=True, exist_ok=True)
        conf = proc.cwd / "redis.conf"
        conf.write_text(render_redis_config(self.layout, node, proc.cwd))
        argv = [REDIS_SERVER, str(conf)]
        master = replicaof if isinstance(replicaof, Node) else (
            self.master_of(node.group) if replicaof is True and node.initial_role == "replica"
            else None)
        if master is not None:
            argv += ["--replicaof", master.announced, str(master.port)]
        proc.argv = self._wrap(argv)
        proc.start()

    def _wrap(self, argv: list[str]) -> list[str]:
        """With Layout.hostnames: run `argv` with the stack's hosts file as /etc/hosts, in a
        private mount namespace (`unshare -m`; the process keeps the PID the lab sees)."""
        if not self.layout.hostnames:
            return argv
        script = 'mount --bind "$0" /etc/hosts && exec "$@"'
        return [UNSHARE, "-m", "sh", "-c", script, str(self.hosts_file), *argv]

    def _write_hosts(self) -> None:
        """The hosts file: localhost and every node's name. Rewritten in place (same inode:
        the bind mounts see the change)."""
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost"]
        lines += [f"{n.host} {n.hostname}" for n in self.nodes.values() if n.hostname]
        with open(self.hosts_file, "w") as f:
            f.write("\n".join(lines) + "\n")

    # ----------------------------------------------------------------- topology changes

    def add_node(self, name: str, group: str, host: str, replicaof: str,
                 timeout_s: float = 10) -> Node:
        """Start a new node at runtime: `host` (a loopback address, or ::1 with its own port
        in an ipv6 layout), replica of node `replicaof`; wait until it answers PING."""
        if name in self.nodes:
            raise LocalStackError(f"node {name} exists already")
        port = self.layout.redis_port
        if self.layout.ipv6:
            port = max(n.port for n in self.nodes.values()) + 1
        check_port_free(host, port, f"redis node {name}")
        node = Node(name, group, host, port, "replica",
                    f"{name}.redis.test" if self.layout.hostnames else "")
        self.nodes[name] = node
        self._nodes[name] = ManagedProcess(name, [], self.workdir / name,
                                           self.workdir / name / f"{name}.log")
        if self.layout.hostnames:
            self._write_hosts()
        self._start_node_proc(name, self.nodes[replicaof])
        self._wait_ping(self._nodes[name], node.addr, time.monotonic() + timeout_s)
        return node

    def move_node(self, name: str, host: str, timeout_s: float = 10) -> Node:
        """The node restarts on another address with its data (`SHUTDOWN SAVE`, then the same
        dir), in the role it had: a restarted pod with a new IP. With hostnames its name now
        resolves to `host` (the hosts file is rewritten before it starts)."""
        info = resp.info_fields(self.redis_command(name, "INFO", "replication"))
        master: Node | None = None
        if info.get("role") == "slave":
            announced = info.get("master_host", "")
            master = next((n for n in self.nodes.values()
                           if announced in (n.host, n.hostname)), None)
        with contextlib.suppress(OSError, resp.RespError):
            self.redis_command(name, "SHUTDOWN", "SAVE", timeout_s=5.0)
        proc = self._nodes[name]
        if not proc.wait_exit(time.monotonic() + timeout_s):
            raise LocalStackError(f"{name} did not exit after SHUTDOWN SAVE")
        node = dataclasses.replace(self.nodes[name], host=host)
        check_port_free(host, node.port, f"redis node {name}")
        self.nodes[name] = node
        if self.layout.hostnames:
            self._write_hosts()
        self._start_node_proc(name, master)
        self._wait_ping(proc, node.addr, time.monotonic() + timeout_s)
        return node

    @property
    def haproxy_admin(self) -> str:
        """The admin socket for the controller: `tcp:[::1]:P` in an ipv6 layout, else the
        unix socket path."""
        if self.layout.admin_tcp_port:
            return f"tcp:{Address('::1', self.layout.admin_tcp_port)}"
        return str(self.haproxy_socket)

    def _write_haproxy_config(self) -> None:
        write_haproxy_config(self.layout, self.haproxy_socket, self.haproxy_config_path)

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
        flags = (("-W", "-S", str(self.haproxy_master_socket))
                 if self.layout.haproxy_master_worker else ())
        self._haproxy = start_haproxy(self.haproxy_config_path, self.haproxy_socket,
                                      self.workdir / "haproxy", flags,
                                      timeout_s=max(0.0, deadline - time.monotonic()))

    def _wait_haproxy(self, what: str, cond: Callable[[], int | None], deadline: float) -> int:
        """wait_until `cond` on the admin socket (its errors mean "not yet"), failing at once
        if HAProxy exits."""

        def cond_or_exited() -> int | None:
            code = self._haproxy.exited()
            if code is not None:
                raise LocalStackError(f"haproxy exited with code {code} while waiting for "
                                      f"{what}; log {self._haproxy.log}:\n"
                                      f"{self._haproxy.log_tail()}")
            return cond()

        return wait_until(cond_or_exited, max(0.0, deadline - time.monotonic()), what,
                          not_yet=(HAProxyError, *NOT_YET),
                          context=lambda: self._haproxy.log_tail(8))

    def _wait_ping(self, proc: ManagedProcess, addr: Address, deadline: float) -> None:
        secret = (self.layout.sentinel_password if proc in self._sentinels
                  else self.layout.redis_password)
        password = secret or None
        self._wait(
            f"{proc.name} at {addr} to answer PING",
            lambda: resp.command(addr, "PING", timeout_s=0.5, password=password) == "PONG",
            deadline,
            [proc],
        )

    def _wait_replica_linked(self, node: Node, deadline: float) -> None:
        def linked() -> bool:
            info = resp.info_fields(
                self.redis_command(node.name, "INFO", "replication", timeout_s=0.5)
            )
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
                if (m.get("ip"), m.get("port")) != (master.announced, str(master.port)):
                    return False
                if (int(m.get("num-slaves", "0")) < self.layout.replicas
                        or m.get("num-other-sentinels") != want_others):
                    return False
            return True

        self._wait(
            f"sentinel{i} to know every group with its replica and {want_others} other sentinels",
            ready,
            deadline,
            [self._sentinels[i]],
        )

    def _wait(
        self, what: str, cond: Callable[[], bool], deadline: float, watch: list[ManagedProcess]
    ) -> None:
        """wait_until ``cond``, failing at once if a watched process exits."""

        def cond_or_exited() -> bool:
            for p in watch:
                code = p.exited()
                if code is not None:
                    raise LocalStackError(
                        f"{p.name} exited with code {code} while waiting for {what}; "
                        f"log {p.log}:\n{p.log_tail()}"
                    )
            return cond()

        def tails() -> str:
            return "\n".join(f"--- {p.name} ({p.log}):\n{p.log_tail(8)}" for p in watch)

        wait_until(cond_or_exited, max(0.0, deadline - time.monotonic()), what,
                   context=tails)


class StackActions:
    """The drill's actions (lab.drill.Actions) on a LocalStack's own processes, by their PIDs.

    A restarted node comes back from its original config: an old master as a master (as a
    restarted container would), a replica as a replica of the node it started under.
    """

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack

    def kill(self, addr: str) -> None:
        self.stack.kill_node(self.stack.node_named(addr))

    def pause(self, addr: str) -> None:
        self.stack.pause_node(self.stack.node_named(addr))

    def resume(self, addr: str) -> None:
        self.stack.resume_node(self.stack.node_named(addr))

    def restart(self, addr: str) -> bool:
        self.stack.start_node(self.stack.node_named(addr))
        return True

    def describe(self, verb: str, addr: str) -> str:
        return f"{verb} {self.stack.node_named(addr)} ({addr})"
