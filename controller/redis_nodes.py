"""Redis node adapter: the only module that talks to Redis nodes themselves (not Sentinel).

It asks nodes their ROLE, all of them in one sweep (parsed into a frozen `Role`): the loop
uses it to see the replica the failover leader promotes become a master, up to ~1 s before
the leader's own INFO poll says so (`+promoted-slave`), and the roster to hear from replicas
coming back to serve reads, or forgotten by the Sentinels (`SENTINEL RESET`), whether they
replicate from the master.
One kept connection per node (no pool, no retries: errors surface), short timeouts, the same
password/ACL/TLS options as for Sentinel but their own settings (`redis_*`). A node that did
not answer within the timeout is not asked again for QUIET_AFTER_TIMEOUT_S (a NodeError says
so at once): the caller is the loop, and a node that drops packets would otherwise hold it
for the whole timeout on every ask (ROLE is polled every few ms during a promotion).
Must not decide anything and must not change anything on a node: it only reads ROLE.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from controller.model import Address
from controller.sentinel import NO_LIB_INFO, Auth, describe_error


class RoleAsker(Protocol):
    """What the loop and the roster need from Redis nodes (`RedisNodes` is one): ROLE of each
    node asked, or the NodeError that says why it could not be asked."""

    def roles(self, addrs: Collection[Address]) -> dict[Address, Role | NodeError]: ...


@dataclass(frozen=True)
class Role:
    """A node's ROLE reply: `kind` (`master`, `slave`, `sentinel`) and, for a replica whose
    link is up, the master it is `linked_to` (None while it connects or syncs)."""

    kind: str
    linked_to: Address | None = None


def parse_role(reply: Any) -> Role:
    """A ROLE reply -> Role (`["slave", host, port, "connected", offset]` for a linked
    replica; `connect`/`connecting`/`sync` while it is not). ValueError on a reply of another
    shape."""
    if not isinstance(reply, list) or not reply or not isinstance(reply[0], str):
        raise ValueError(f"unexpected ROLE reply {reply!r:.80}")
    if reply[0] != "slave":
        return Role(reply[0])
    try:
        host, port, state = str(reply[1]), int(reply[2]), str(reply[3])
    except (IndexError, TypeError, ValueError):
        raise ValueError(f"unexpected ROLE reply {reply!r:.80}") from None
    return Role("slave", Address(host, port) if state == "connected" else None)


QUIET_AFTER_TIMEOUT_S = 1.0


class NodeError(Exception):
    """A node could not be asked, or answered something that is not a ROLE reply."""


class NodeQuiet(NodeError):
    """Not asked: the node timed out less than QUIET_AFTER_TIMEOUT_S ago (nothing new)."""


class RedisNodes:
    """ROLE of Redis nodes, one kept connection each (dropped on any error)."""

    def __init__(self, auth: Auth, timeout_s: float = 0.2) -> None:
        self.auth = auth
        self.timeout_s = timeout_s
        self._conns: dict[Address, Any] = {}
        self._quiet_until: dict[Address, float] = {}  # node -> not asked before (monotonic)

    def roles(self, addrs: Collection[Address]) -> dict[Address, Role | NodeError]:
        """ROLE of each node, or the NodeError naming it. Every ROLE is sent before any
        answer is read, and the answers share one deadline (`timeout_s` after the last send):
        a sweep over the replicas of many failovers at once (a host with many masters died)
        waits about one round trip, and nodes that do not answer cost one timeout together,
        not one each. A kept connection the node closed is replaced once, at once: Sentinel
        kills the promoted replica's client connections together with `REPLICAOF NO ONE`."""
        out: dict[Address, Role | NodeError] = {}
        sent: dict[Address, bool] = {}
        for addr in dict.fromkeys(addrs):  # one question in flight per connection
            try:
                sent[addr] = self._send(addr)
            except NodeError as e:
                out[addr] = e
        deadline = time.monotonic() + self.timeout_s
        for i, (addr, kept) in enumerate(sent.items()):
            try:
                # The first answer is read as it comes (its socket timeout is the deadline);
                # only the later ones are polled for first. redis-py's poll costs a few
                # syscalls per read, which the 1 ms promotion watch of one replica felt: the
                # reads of a 3-node double fault reconnected ~0.15 ms later (bench/RESULTS.md).
                out[addr] = self._receive(addr, kept, deadline if i else None)
            except NodeError as e:
                out[addr] = e
        return out

    def _send(self, addr: Address) -> bool:
        """Send ROLE; True when it went on a kept connection (which the node may have closed
        since: `_receive` then asks once more on a new one)."""
        if time.monotonic() < self._quiet_until.get(addr, 0.0):
            raise NodeQuiet(f"redis node {addr}: no answer within {self.timeout_s:g}s less than "
                            f"{QUIET_AFTER_TIMEOUT_S:g}s ago; not asked again yet")
        conn = self._conns.get(addr)
        try:
            if conn is not None:
                try:
                    conn.send_command("ROLE", check_health=False)
                    return True
                except redis.ConnectionError as e:
                    if isinstance(e, redis.TimeoutError):
                        raise
                    self._drop(addr)
            conn = self._conns[addr] = self._connect(addr)
            conn.send_command("ROLE", check_health=False)
            return False
        except redis.RedisError as e:
            raise self._failed(addr, e) from None

    def _receive(self, addr: Address, kept: bool, deadline: float | None) -> Role:
        """The answer to `_send`, parsed; a timeout if none has begun by `deadline` (None:
        within the socket timeout)."""
        conn = self._conns[addr]
        try:
            if deadline is not None and not conn.can_read(
                    timeout=max(0.0, deadline - time.monotonic())):
                raise redis.TimeoutError(f"Timeout reading from {addr}")
            reply = conn.read_response()
        except redis.ConnectionError as e:
            if not kept or isinstance(e, redis.TimeoutError):
                raise self._failed(addr, e) from None
            self._drop(addr)  # closed by the node since the last ask: once more, on a new one
            return self._receive(addr, self._send(addr), None)
        except redis.RedisError as e:
            raise self._failed(addr, e) from None
        self._quiet_until.pop(addr, None)
        try:
            return parse_role(reply)
        except ValueError as e:
            self._drop(addr)
            raise NodeError(f"redis node {addr}: {e}") from None

    def _failed(self, addr: Address, e: redis.RedisError) -> NodeError:
        """Drop the connection after an error (and ask no more for a while after a timeout)."""
        self._drop(addr)
        if isinstance(e, redis.TimeoutError):
            self._quiet_until[addr] = time.monotonic() + QUIET_AFTER_TIMEOUT_S
        return NodeError(f"redis node {addr}: {describe_error(e)}")

    def forget(self, keep: set[Address]) -> None:
        """Close the connections to every node not in `keep`."""
        for addr in [a for a in self._conns if a not in keep]:
            self._drop(addr)
        self._quiet_until = {a: t for a, t in self._quiet_until.items() if a in keep}

    def close(self) -> None:
        self.forget(set())

    def _drop(self, addr: Address) -> None:
        conn = self._conns.pop(addr, None)
        if conn is not None:
            conn.disconnect()

    def _connect(self, addr: Address) -> Any:
        kwargs: dict[str, Any] = {}
        cls: Any = redis.Connection
        if self.auth.tls:
            cls = redis.SSLConnection
            kwargs.update(self.auth.tls_kwargs())
        return cls(
            host=addr.host, port=addr.port, username=self.auth.username,
            password=self.auth.password, protocol=2, decode_responses=True,
            socket_connect_timeout=self.timeout_s, socket_timeout=self.timeout_s,
            retry=Retry(NoBackoff(), 0), client_name="sentinel-haproxy", **NO_LIB_INFO, **kwargs,
        )
