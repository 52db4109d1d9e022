"""Sentinel adapter: the only module that talks to Sentinels.

Two jobs, both per Sentinel:
- `SentinelReader.read()`: one pipelined round trip per Sentinel (all Sentinels in
  parallel) giving every group's address, config-epoch, flags and replicas;
- `EventWatcher`: a thread holding a pub/sub connection (`PSUBSCRIBE *`). redis-py does not
  notice a hung Sentinel and reconnects silently after a restart (facts 0.4), so the watcher
  disables redis-py's retries, pings on the pub/sub connection itself, declares the
  connection dead when a pong is late, and reconnects on its own, reporting each
  (re)connect and loss as a hint.
Must not decide anything: it reports what Sentinels say, parsed into frozen values.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from controller.model import Address, SentinelView
from controller.sentinel_parse import (
    NotASentinelError,
    SentinelEvent,
    SentinelReplyError,
    parse_event,
    parse_pipeline,
    parse_sentinels,
    pipeline_commands,
)

log = structlog.get_logger("controller.sentinel")


@dataclass(frozen=True)
class Auth:
    username: str | None = None
    password: str | None = None
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None  # client certificate (Sentinel `tls-auth-clients yes`)
    tls_key_file: str | None = None

    def tls_kwargs(self) -> dict[str, Any]:
        """redis-py keyword arguments for TLS (certificate checked against the CA)."""
        return {
            "ssl_ca_certs": self.tls_ca_file,
            "ssl_cert_reqs": "required",
            "ssl_certfile": self.tls_cert_file,
            "ssl_keyfile": self.tls_key_file,
        }

    def __repr__(self) -> str:  # never print a secret
        return f"Auth(username={self.username!r}, password={'***' if self.password else None})"


def _client(addr: Address, auth: Auth, timeout_s: float, sock_timeout: float | None) -> Any:
    kwargs: dict[str, Any] = {}
    if auth.tls:
        kwargs.update(ssl=True, **auth.tls_kwargs())
    return redis.Redis(
        host=addr.host,
        port=addr.port,
        username=auth.username,
        password=auth.password,
        protocol=2,  # flat field lists; parsed at the edge by sentinel_parse
        decode_responses=True,
        socket_connect_timeout=timeout_s,
        socket_timeout=sock_timeout,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),  # errors must surface: we reconnect ourselves
        client_name="sentinel-haproxy",
        **kwargs,
    )


def problem_of(e: BaseException) -> str:
    """What kind of trouble an error from a Sentinel is: `auth`, `unreachable`, `not_sentinel`
    (the peer is a plain Redis) or `bad_reply`."""
    text = str(e)
    if isinstance(e, NotASentinelError) or "unknown command" in text:
        return "not_sentinel"
    if (isinstance(e, redis.AuthenticationError) or "NOAUTH" in text or "WRONGPASS" in text
            or "Authentication required" in text or "invalid user" in text):
        return "auth"
    if isinstance(e, redis.ConnectionError | OSError):
        return "unreachable"
    return "bad_reply"


def describe_error(e: BaseException) -> str:
    """A short, secret-free description of a connection or reply error."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "Authentication required" in text or "NOAUTH" in text:  # also an AuthenticationError
        return "authentication required: set the sentinel password"
    if isinstance(e, redis.AuthenticationError) or "WRONGPASS" in text or "invalid user" in text:
        return f"authentication failed: {text}"
    if "certificate required" in text or "EOF occurred in violation of protocol" in text:
        # The Sentinel ended the TLS handshake; which of the two texts shows depends on
        # whether the write or the read saw it first.
        return (f"TLS handshake refused (does the Sentinel require a client certificate? "
                f"see sentinel_tls_cert_file): {text}")
    return f"{type(e).__name__}: {text}"


class SentinelReader:
    """Reads the full state of every configured group from every Sentinel.

    All Sentinels are asked at once without threads: the whole pipeline is written to every
    connection first, then the replies are read, so a pass costs about one round trip plus
    parsing (threads cost more than they save here: the GIL serialises the parsing).
    """

    def __init__(
        self,
        sentinels: Sequence[Address],
        auth: Auth,
        masters: Sequence[str],
        timeout_s: float = 1.0,
    ) -> None:
        self.sentinels = list(sentinels)
        self.auth = auth
        self.fixed_masters = list(masters)  # empty: every master the Sentinels monitor
        self.timeout_s = timeout_s
        self._conns = {str(s): _connection(s, auth, timeout_s) for s in self.sentinels}
        self._known: list[str] = list(masters)
        self._ids: dict[str, str] = {}  # address -> SENTINEL MYID, once it answered
        self._myid_denied: set[str] = set()

    def close(self) -> None:
        for c in self._conns.values():
            c.disconnect()

    @property
    def master_names(self) -> list[str]:
        return list(self._known)

    def read(self, skip: Collection[str] = ()) -> list[SentinelView]:
        """One view per Sentinel, in configuration order; errors are carried, not raised.

        Sentinels in `skip` (their pub/sub link is known dead, e.g. hung) are not asked:
        a hung one would hold the pass for a whole timeout.
        """
        views = self._read_all(list(self._known), skip)
        if not self.fixed_masters:
            monitored = {n for v in views for n in v.master_names_seen}
            if all(v.view.error is None for v in views):
                # Every Sentinel answered: a group none of them monitors any more (SENTINEL
                # REMOVE) is forgotten instead of staying undecided for ever.
                self._known = [n for n in self._known if n in monitored]
            seen = sorted(monitored | set(self._known))
            if seen != self._known:  # a group we have not seen yet: ask again, once
                self._known = seen
                views = self._read_all(seen, skip)
        return [v.view for v in views]

    def discover(self) -> list[Address]:
        """Ask every Sentinel that answered before for the other Sentinels of every known group
        (`SENTINEL SENTINELS`); add the ones not known yet (by their ID, whatever address they
        were listed at) and return their addresses. Errors leave things as they are."""
        names = list(self._known)
        if not names:
            return []
        known_ids = set(self._ids.values())
        found: dict[str, Address] = {}
        for key, conn in self._conns.items():
            if key not in self._ids:
                continue
            try:
                conn.send_packed_command(
                    conn.pack_commands([("SENTINEL", "SENTINELS", n) for n in names]),
                    check_health=False)
                replies = _read_replies(conn, len(names))
            except redis.RedisError:
                conn.disconnect()
                continue
            for name, reply in zip(names, replies, strict=True):
                if isinstance(reply, Exception):
                    continue  # it does not monitor this group
                try:
                    others = parse_sentinels(reply, f"SENTINEL SENTINELS {name}")
                except SentinelReplyError:
                    continue
                for addr, runid in others:
                    if runid not in known_ids and runid not in found:
                        found[runid] = addr
        added: list[Address] = []
        for addr in found.values():
            if str(addr) in self._conns:
                continue
            self.sentinels.append(addr)
            self._conns[str(addr)] = _connection(addr, self.auth, self.timeout_s)
            added.append(addr)
        return added

    def _read_all(self, names: list[str], skip: Collection[str]) -> list[_Reply]:
        cmds = pipeline_commands(names)
        out: dict[str, _Reply] = {}
        sent: list[str] = []
        for addr in self.sentinels:
            key = str(addr)
            if key in skip:
                out[key] = self._failed(key, "event connection down", "unreachable")
                continue
            conn = self._conns[key]
            try:
                conn.send_packed_command(conn.pack_commands(cmds), check_health=False)
                sent.append(key)
            except redis.RedisError as e:
                conn.disconnect()
                out[key] = self._failed(key, describe_error(e), problem_of(e))
        for key in sent:
            conn = self._conns[key]
            try:
                try:
                    replies = _read_replies(conn, len(cmds))
                except redis.ConnectionError as e:
                    if isinstance(e, redis.TimeoutError):
                        raise
                    # A connection the Sentinel closed (it restarted): the first use after
                    # that fails. Reconnect and ask once more, so the pass still counts it.
                    conn.disconnect()
                    conn.send_packed_command(conn.pack_commands(cmds), check_health=False)
                    replies = _read_replies(conn, len(cmds))
            except redis.RedisError as e:  # timeout, reset: the stream is unusable
                conn.disconnect()
                out[key] = self._failed(key, describe_error(e), problem_of(e))
                continue
            try:
                out[key] = self._build(key, names, replies)
            except SentinelReplyError as e:
                problem = problem_of(e)
                why = "not a Sentinel" if problem == "not_sentinel" else "bad reply"
                out[key] = self._failed(key, f"{why}: {e}", problem)
        return [out[str(a)] for a in self.sentinels]

    def _failed(self, key: str, error: str, problem: str) -> _Reply:
        """A Sentinel that could not be used; it keeps the ID it answered with before."""
        return _Reply(SentinelView(sentinel=key, error=error, problem=problem,
                                   myid=self._ids.get(key, "")))

    def _build(self, key: str, names: list[str], replies: list[Any]) -> _Reply:
        if isinstance(replies[2], redis.ResponseError) and "permission" in str(replies[2]):
            # An ACL user made for an older version: count this Sentinel by its address.
            if key not in self._myid_denied:
                self._myid_denied.add(key)
                log.warning("sentinel_myid_denied", sentinel=key,
                            detail="allow +sentinel|myid +sentinel|sentinels for the ACL user: "
                            "without its ID a Sentinel listed twice would vote twice")
            replies = [*replies[:2], None, *replies[3:]]
        for r in replies[:3]:
            if isinstance(r, Exception):
                if problem_of(r) == "not_sentinel":
                    raise NotASentinelError(describe_error(r))
                raise SentinelReplyError(describe_error(r))
        view, monitored = parse_pipeline(key, names, replies)
        if view.myid:
            self._ids[key] = view.myid
        return _Reply(view, monitored)


def _read_replies(conn: Any, count: int) -> list[Any]:
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(conn.read_response())
        except redis.ResponseError as e:  # one refused command; the stream is intact
            replies.append(e)
    return replies


@dataclass(frozen=True)
class _Reply:
    view: SentinelView
    master_names_seen: frozenset[str] = frozenset()


def _connection(addr: Address, auth: Auth, timeout_s: float) -> Any:
    """A bare connection for pipelined reads (no pool, no retries: errors surface)."""
    kwargs: dict[str, Any] = {}
    cls: Any = redis.Connection
    if auth.tls:
        cls = redis.SSLConnection
        kwargs.update(auth.tls_kwargs())
    return cls(
        host=addr.host,
        port=addr.port,
        username=auth.username,
        password=auth.password,
        protocol=2,
        decode_responses=True,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
        client_name="sentinel-haproxy",
        **kwargs,
    )


HintKind = Literal["event", "connected", "disconnected", "bad_event"]


@dataclass(frozen=True)
class Hint:
    """Something that may mean the state changed; the loop reconciles on it."""

    sentinel: str
    kind: HintKind
    received: float  # time.monotonic() when it arrived
    event: SentinelEvent | None = None
    detail: str = ""


class EventWatcher:
    """One thread per Sentinel: pub/sub events and connection changes become hints."""

    def __init__(
        self,
        addr: Address,
        auth: Auth,
        put: Callable[[Hint], None],
        ping_interval_s: float = 0.5,
        dead_after_s: float = 1.5,
        connect_timeout_s: float = 1.0,
        max_backoff_s: float = 2.0,
    ) -> None:
        self.addr = addr
        self.auth = auth
        self._put = put
        self.ping_interval_s = ping_interval_s
        self.dead_after_s = dead_after_s
        self.connect_timeout_s = connect_timeout_s
        self.max_backoff_s = max_backoff_s
        self.connected = False
        self.last_error = ""
        self.last_pong = 0.0  # time.monotonic() of the last pong: the Sentinel is alive
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"sentinel-watch-{addr}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _hint(self, kind: HintKind, event: SentinelEvent | None = None, detail: str = "") -> None:
        self._put(Hint(str(self.addr), kind, time.monotonic(), event, detail))

    def _run(self) -> None:
        backoff = 0.05
        while not self._stop.is_set():
            try:
                self._session()
                backoff = 0.05
            except Exception as e:  # any failure: drop the connection, report, retry
                if not isinstance(e, redis.RedisError | OSError | SentinelReplyError):
                    # Not the network, not the peer: a bug. Say so with its traceback; the
                    # watcher goes on (its Sentinel keeps its vote through the reader).
                    log.exception("unexpected_error", where="event watcher",
                                  sentinel=str(self.addr))
                err = describe_error(e)
                if self.connected or err != self.last_error:
                    self._hint("disconnected", detail=err)
                self.connected = False
                self.last_error = err
            self._stop.wait(backoff)
            backoff = min(self.max_backoff_s, backoff * 2)

    def _session(self) -> None:
        client = _client(self.addr, self.auth, self.connect_timeout_s, self.dead_after_s)
        pubsub = client.pubsub()
        try:
            pubsub.psubscribe("*")
            deadline = time.monotonic() + self.dead_after_s
            while True:  # wait for the subscription to be confirmed
                msg = pubsub.get_message(timeout=0.1)
                if msg and msg.get("type") == "psubscribe":
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("no PSUBSCRIBE confirmation")
                if self._stop.is_set():
                    return
            self.connected = True
            self.last_error = ""
            self._hint("connected")
            self._listen(pubsub)
        finally:
            pubsub.close()
            client.close()

    def _listen(self, pubsub: Any) -> None:
        seq = 0
        last_pong = time.monotonic()
        next_ping = last_pong
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_ping:
                seq += 1
                pubsub.ping(f"hc{seq}")
                next_ping = now + self.ping_interval_s
            if now - last_pong > self.dead_after_s:
                raise TimeoutError(f"no pong for {now - last_pong:.1f}s (sentinel hung?)")
            msg = pubsub.get_message(timeout=min(0.1, max(0.0, next_ping - now)))
            if not msg:
                continue
            kind = msg.get("type")
            if kind == "pong":
                last_pong = self.last_pong = time.monotonic()
            elif kind == "pmessage":
                channel = msg.get("channel")
                if channel == "__sentinel__:hello":
                    continue  # gossip between Sentinels, every 2 s each: not a state change
                try:
                    event = parse_event(channel, msg.get("data"))
                except SentinelReplyError as e:
                    self._hint("bad_event", detail=str(e))
                    continue
                self._hint("event", event)


class HintQueue:
    """Bounded hand-off from watcher threads to the loop. When full, hints are dropped
    and a flag says so: the next pass reads the full state anyway, nothing is lost."""

    def __init__(self, maxsize: int = 10_000) -> None:
        self._q: queue.Queue[Hint] = queue.Queue(maxsize)
        self._overflowed = False
        self._lock = threading.Lock()  # the flag is set by watchers, taken by the loop

    def put(self, hint: Hint) -> None:
        try:
            self._q.put_nowait(hint)
        except queue.Full:
            with self._lock:
                self._overflowed = True

    def take_overflow(self) -> bool:
        """Whether hints were dropped since the last call (and clear it, atomically)."""
        with self._lock:
            was, self._overflowed = self._overflowed, False
        return was

    def get(self, timeout_s: float) -> list[Hint]:
        """Wait up to `timeout_s` for a hint, then take every hint that is waiting."""
        try:
            first = self._q.get(timeout=max(0.0, timeout_s))
        except queue.Empty:
            return []
        out = [first]
        while len(out) < 10_000:
            try:
                out.append(self._q.get_nowait())
            except queue.Empty:
                break
        return out
