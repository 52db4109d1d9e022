"""Frozen values the core works on: what Sentinel says, what HAProxy has, what we want.

Adapters parse raw replies into these types at the edge; the core (decide, plan, loop)
never sees raw text. Nothing here does I/O.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from dataclasses import dataclass, field


@dataclass(frozen=True, order=True)
class Address:
    """A Redis node as Sentinel names it: host (IP, or hostname with announce-hostnames), port."""

    host: str
    port: int

    def __str__(self) -> str:
        """`host:port`, IPv6 bracketed (`[::1]:6379`) so that `parse` reads it back."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def ip(self) -> str | None:
        """The host as a normalised IP address (`::1`, `127.0.0.1`), None for a hostname."""
        return normal_ip(self.host)

    @classmethod
    def parse(cls, text: str, what: str = "address", default_host: str = "") -> Address:
        """`HOST:PORT` (IPv6 as `[::1]:6379`; `:PORT` means `default_host` when one is given);
        ValueError naming `what` and the input otherwise.

        The one host:port parser of the project: settings, adapters and the lab all use it.
        """
        host, sep, port = text.strip().rpartition(":")
        bracketed = host.startswith("[") and host.endswith("]")
        if ":" in host and not bracketed:  # `::1:6379`: which colon ends the address?
            raise ValueError(f"{what} {text!r}: write an IPv6 address in brackets, [::1]:6379")
        host = host[1:-1] if bracketed else host
        host = host or default_host
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{what} {text!r}: expected HOST:PORT")
        return cls(host, int(port))


@functools.lru_cache(maxsize=8192)  # every pass asks for the same few thousand hosts
def normal_ip(host: str) -> str | None:
    """`host` as HAProxy prints an IP (compressed IPv6, no brackets), None if not an IP."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


_DOWN_FLAGS = frozenset({"s_down", "o_down", "disconnected"})


@dataclass(frozen=True)
class ReplicaInfo:
    """One entry of `SENTINEL REPLICAS <master>`, reduced to what health needs."""

    addr: Address
    flags: frozenset[str]
    role_reported: str
    link_ok: bool
    master_addr: Address | None  # None when the replica reports `master-host:?`
    link_down_ms: int = 0  # master-link-down-time: how long its link has been down (<0: never up)

    def healthy_for(self, master: Address) -> bool:
        """Up and really replicating from `master`: what a node needs to START serving reads.

        `flags` alone is not enough: an old master that comes back is listed as `slave`
        without `s_down` while it still reports role master (facts B.1), and right after
        Sentinel converts it, its link is not up until it has resynced its data.
        """
        return (
            not (self.flags & _DOWN_FLAGS)
            and self.role_reported == "slave"
            and self.link_ok
            and self.master_addr == master
        )

    @property
    def sdown(self) -> bool:
        """Sentinel sees it down (`s_down`/`o_down`). Not `disconnected`: that is also a node
        whose connections its own `SLAVEOF NO ONE` just closed (Sentinel's `CLIENT KILL`)."""
        return bool(self.flags & {"s_down", "o_down"})

    def still_serves(self, max_link_down_ms: int) -> bool:
        """Alive, a replica, and not staler than `max_link_down_ms`: what a node that already
        serves reads needs to KEEP serving them. A broken link is staleness, not death: while
        its master is down or failing over, a replica still holds every write it received."""
        fresh = self.link_ok or 0 <= self.link_down_ms <= max_link_down_ms
        return not (self.flags & _DOWN_FLAGS) and self.role_reported == "slave" and fresh


@dataclass(frozen=True)
class MasterView:
    """What one Sentinel says about one master group, read in one pipeline."""

    name: str
    addr: Address  # GET-MASTER-ADDR-BY-NAME: right even mid-failover on the leader (facts B.2)
    epoch: int  # config-epoch: the version of `addr`
    flags: frozenset[str]  # flags of SENTINEL MASTER; they describe `master_entry_addr`
    master_entry_addr: Address  # ip/port of SENTINEL MASTER (old one on the leader mid-failover)
    replicas: tuple[ReplicaInfo, ...]
    other_sentinels: int = 0  # num-other-sentinels: the group has other_sentinels + 1 Sentinels
    down_after_ms: int = 0  # down-after-milliseconds: how long before it calls a node down
    failover_state: str = ""  # the leader's failover step (`send_slaveof_noone`...), else ""
    failover_timeout_ms: int = 180_000

    @property
    def promoting(self) -> Address | None:
        """The replica this Sentinel, as failover leader, has chosen and is promoting, while
        nothing is promoted yet (GET-MASTER-ADDR still names the old master).

        The leader flags its choice `promoted` when it selects it, before `REPLICAOF NO ONE`
        (facts: "a promotion, seen from every Sentinel every 10 ms").
        """
        if not self.failing_over:
            return None
        chosen = [r.addr for r in self.replicas if "promoted" in r.flags]
        return chosen[0] if len(chosen) == 1 else None

    @property
    def reconfiguring(self) -> bool:
        """This Sentinel, as failover leader, has promoted the node GET-MASTER-ADDR now names
        and is pointing the other replicas at it (`failover-state reconf_slaves`, until its
        `+switch-master`): each gets `SLAVEOF`, whose `CLIENT KILL` closes its connections.
        The leader's entry keeps the old address with `failover_in_progress` meanwhile
        (tests/data/sentinel_reconf*.json)."""
        return self.master_entry_addr != self.addr and "failover_in_progress" in self.flags

    @property
    def odown(self) -> bool:
        """The master this view names is objectively down (flags describe that very address)."""
        return self.master_entry_addr == self.addr and "o_down" in self.flags

    @property
    def failing_over(self) -> bool:
        """A failover of the master this view names has started and nothing is promoted yet.

        From `+try-failover` the leader flags its entry `failover_in_progress`; once the
        replica is promoted, GET-MASTER-ADDR names the new node while the entry keeps the
        old one (facts B.2), so this turns false exactly when the new master is known.
        """
        return self.master_entry_addr == self.addr and "failover_in_progress" in self.flags


@dataclass(frozen=True)
class SentinelView:
    """One Sentinel's answer for all groups, or why it could not be used."""

    sentinel: str  # "host:port" as configured (or as discovered)
    masters: dict[str, MasterView] = field(default_factory=dict)
    error: str | None = None  # why it could not be asked, or its reply could not be used
    tilt: bool = False
    myid: str = ""  # SENTINEL MYID: one Sentinel, one vote, whatever address it was listed at
    problem: str = ""  # kind of `error`: unreachable, auth, not_sentinel, bad_reply
    group_errors: dict[str, str] = field(default_factory=dict)  # group -> its bad reply

    @property
    def usable(self) -> bool:
        return self.error is None and not self.tilt

    @property
    def identity(self) -> str:
        """The Sentinel's own ID when known, else the address it was asked at."""
        return self.myid or self.sentinel


@dataclass(frozen=True)
class Decision:
    """The Sentinels' verdict for one group: who takes writes, who serves reads, or undecided."""

    name: str
    master: Address | None  # None: undecided, HAProxy keeps its state
    epoch: int = -1
    replicas: frozenset[Address] = frozenset()  # replicas that serve reads
    # Replicas that still count as serving reads but take no new ones for now: they follow the
    # old master and Sentinel is about to reconfigure them (its SLAVEOF closes their clients).
    paused: frozenset[Address] = frozenset()
    fenced: bool = False  # master o_down or being failed over: no server gets writes
    reason: str = ""  # why undecided / fenced, or the evidence used
    voters: int = 0  # sentinels whose answer was used
    fallback: Address | None = None  # serves reads when no replica can: the master, if alive
    promoting: Address | None = None  # the leader's chosen replica, not yet promoted
    early: bool = False  # `master` is that replica, followed as soon as it answered ROLE master
    failover_timeout_ms: int = 0  # Sentinel's failover-timeout for the group (bounds `promoting`)
    # Every node the Sentinels list for the group (master, replicas, retained ones): each gets
    # a server slot in slot-based backends (controller.slots). Empty: only fixed servers.
    nodes: frozenset[Address] = frozenset()


class AdminState(enum.Enum):
    """The controller's view of a server's admin state (what it sets)."""

    READY = "ready"
    MAINT = "maint"
    DRAIN = "drain"


# srv_admin_state bits (facts A.1.1). 0x04 (config `disabled`) alone means ready again.
_MAINT_BITS = 0x01 | 0x02 | 0x20 | 0x40
_DRAIN_BITS = 0x08 | 0x10


def admin_from_bits(bits: int) -> AdminState:
    if bits & _MAINT_BITS:
        return AdminState.MAINT
    if bits & _DRAIN_BITS:
        return AdminState.DRAIN
    return AdminState.READY


@dataclass(frozen=True)
class ServerState:
    """One HAProxy server as `show servers state` + `show stat` report it."""

    backend: str
    name: str
    addr: str  # IP or "-" when unresolved
    port: int
    admin: AdminState
    op_state: int  # 0 stopped, 1 starting, 2 running, 3 stopping
    sessions: int = 0  # scur
    fqdn: str = "-"
    backup: bool = False  # a `backup` server: HAProxy uses it only while no other one is up
    # HAProxy's own `show servers state` line, uninterpreted: only written back to its
    # server-state file (haproxy_state_file); not part of the state's value.
    line: str = field(default="", compare=False, repr=False)

    def matches(self, node: Address) -> bool:
        """A server stands for a Redis node when address (or FQDN) and port agree."""
        return self.port == node.port and node.host in (self.addr, self.fqdn)

    @property
    def routable(self) -> bool:
        """HAProxy sends new connections here: admin ready and operationally running."""
        return self.admin is AdminState.READY and self.op_state == 2


@dataclass(frozen=True)
class HAProxyInfo:
    """Identity of a running HAProxy process: a change means restart or reload."""

    pid: int
    start_time_s: int
    stopping: bool = False


@dataclass(frozen=True)
class HAProxyState:
    """Every server of every backend of one HAProxy, keyed by backend then server name."""

    info: HAProxyInfo
    backends: dict[str, dict[str, ServerState]]


@dataclass(frozen=True)
class Command:
    """One Runtime API command with the reason the plan gave for it."""

    text: str
    backend: str
    server: str
    reason: str
    before: str = ""  # admin state before ("ready", "maint"...), or the old address
    after: str = ""  # admin state wanted, "sessions-closed", or the new address
    # What a successful reply looks like: "empty" (state changes, facts A.1) or "addr" (`set
    # server B/S addr`: one line, `IP changed from ...` / `no need to change the addr...`).
    expect: str = "empty"
