"""Sentinel adapter: the only module that talks to Sentinels.

Two jobs, both per Sentinel:
- `SentinelReader`: one pipelined round trip per Sentinel (all Sentinels at once, on one
  `select` in the caller's thread) giving the groups' address, config-epoch, flags and
  replicas, and, when a full pass starts, each Sentinel's TILT state, ID and groups;
- `EventWatcher`: a thread holding a pub/sub connection (`PSUBSCRIBE *`). redis-py does not
  notice a hung Sentinel and reconnects silently after a restart (facts 0.4), so the watcher
  disables redis-py's retries, pings on the pub/sub connection itself, declares the
  connection dead when a pong is late, and reconnects on its own, reporting each
  (re)connect and loss as a hint.
Must not decide anything: it reports what Sentinels say, parsed into frozen values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import queue
import select
import socket
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import hiredis
import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

from controller.model import Address, SentinelView
from controller.sentinel_parse import (
    HEAD_COMMANDS,
    Head,
    NotASentinelError,
    SentinelEvent,
    SentinelReplyError,
    group_commands,
    parse_event,
    parse_groups,
    parse_head,
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


#: redis-py sends `CLIENT SETINFO LIB-NAME` and `LIB-VER` on every connect, one round trip
#: each; the controller's connections skip both (`CLIENT SETNAME` names them). A reconnect to
#: the replica being promoted, right after Sentinel's `CLIENT KILL`, is then SETNAME and ROLE:
#: two round trips, not four. redis-py 8 takes `driver_info=None` (lib_name/lib_version None
#: are deprecated there), redis-py 5 only the latter.
NO_LIB_INFO: dict[str, Any] = (
    {"driver_info": None}
    if "driver_info" in inspect.signature(redis.connection.AbstractConnection.__init__).parameters
    else {"lib_name": None, "lib_version": None}
)


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
        **NO_LIB_INFO,
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


#: `enough(answers, pending)`: whether a pass may go on with the answers it has while
#: `pending` Sentinels have not answered yet (decide.decidable for each group read).
Enough = Callable[[list[SentinelView], int], bool]
#: Called with every Sentinel's answer once a round that was cut short by `enough` is
#: complete (from `poll()` or a later read): the caller checks whether the late answers
#: change a verdict.
OnLate = Callable[[list[SentinelView]], None]


class SentinelReader:
    """Reads groups from every Sentinel: all Sentinels at once, in the caller's thread.

    Each Sentinel has one kept connection; a read writes its pipeline to every Sentinel, then
    waits on all the sockets at once (`select`) and parses each reply as it comes (hiredis),
    returning as soon as the answers are `enough`: a slow or hung Sentinel holds nobody. A
    connection carries one pipeline at a time, so a later answer from a Sentinel is never
    older than an earlier one; rounds that arrive while its pipeline is out are merged into
    the next one. Answers that come after their round returned are handed to its `on_late`
    by `poll()` (the loop calls it while `busy()`). Connecting (TCP, TLS, AUTH) happens in a
    short-lived thread per connection, never in the caller's: a Sentinel that hangs on
    connect is simply pending.

    `head()` (when a full pass starts) asks each Sentinel its TILT state, its ID and every
    group it monitors (`INFO sentinel`, `SENTINEL MYID`); `read(groups)` asks the groups'
    master entry, address and replicas, and answers with the last head each Sentinel gave.
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
        self._wake_r, self._wake_w = socket.socketpair()  # connect threads -> select
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._conns = {str(s): _Conn(s, auth, timeout_s, self._wake) for s in self.sentinels}
        self._known: list[str] = list(masters)
        self._found: dict[str, Address] = {}  # run ID -> address, from discovering reads
        self._myid_denied: set[str] = set()
        self._late: list[tuple[OnLate, list[SentinelView]]] = []

    def close(self) -> None:
        for c in self._conns.values():
            c.close()
        self._wake_r.close()
        self._wake_w.close()

    @property
    def master_names(self) -> list[str]:
        return list(self._known)

    def head(self, skip: Collection[str] = (), patient: bool = False,
             on_late: OnLate | None = None) -> list[SentinelView]:
        """Every Sentinel's TILT state and ID (no group), in configuration order; updates the
        known groups (a group no Sentinel monitors any more is forgotten once every Sentinel
        answered). Waits for a majority of the Sentinels asked (every one when `patient`);
        a later answer still updates what `read` reports for that Sentinel, and `on_late`
        gets the complete answers."""
        def majority(answers: list[SentinelView], pending: int) -> bool:
            return len(answers) > (len(answers) + pending) // 2
        return self._round(None, skip, {}, None if patient else majority, on_late, False)

    def read(
        self,
        groups: Sequence[str],
        skip: Collection[str] = (),
        prefill: dict[str, SentinelView] | None = None,
        enough: Enough | None = None,
        on_late: OnLate | None = None,
        discover: bool = False,
    ) -> list[SentinelView]:
        """One view per Sentinel (configuration order) of `groups`; errors are carried, not
        raised. Sentinels in `skip` (their pub/sub link is known dead, e.g. hung) are not
        asked. `prefill` counts as a Sentinel's answer until its own comes. Returns as soon
        as `enough` says so (a Sentinel still pending shows as an error view with problem
        `pending`), else when all answered or after the timeout; `on_late` gets the complete
        answers later. `discover`: also ask each group's other Sentinels (`discover()`)."""
        return self._round(list(groups), skip, prefill or {}, enough, on_late, discover)

    def busy(self) -> bool:
        """Whether answers are still awaited (the caller should `poll()` soon)."""
        return any(c.inflight is not None or c.waiting for c in self._conns.values())

    def poll(self) -> None:
        """Take in the answers that came, without waiting; complete rounds that were cut
        short go to their `on_late` (in this thread)."""
        self._io(0.0)
        self._flush_late()

    def discover(self) -> list[Address]:
        """Sentinels listed by the others (reads with `discover`) whose ID is not known yet,
        whatever address they were listed at: they are read from now on; returns them."""
        known_ids = {c.head.myid for c in self._conns.values() if c.head is not None}
        found = {rid: addr for rid, addr in self._found.items() if rid not in known_ids}
        self._found.clear()
        added: list[Address] = []
        for addr in found.values():
            if str(addr) in self._conns:
                continue
            self.sentinels.append(addr)
            self._conns[str(addr)] = _Conn(addr, self.auth, self.timeout_s, self._wake)
            added.append(addr)
        return added

    # -- rounds --------------------------------------------------------------------------
    def _round(self, groups: list[str] | None, skip: Collection[str],
               prefill: dict[str, SentinelView], enough: Enough | None,
               on_late: OnLate | None, discover: bool) -> list[SentinelView]:
        self._io(0.0)  # answers already in belong to earlier rounds: take them first
        conns = list(self._conns.values())
        asked = [c for c in conns if c.key not in skip]
        r = _Round(groups, {c.key for c in asked}, dict(prefill), on_late, discover)
        for c in asked:
            c.waiting.append(r)
            self._send(c)
        deadline = time.monotonic() + self.timeout_s + 0.05
        while True:
            pending = len(r.asked - r.done - set(r.answers))  # prefilled ones count
            if not pending or (enough is not None and enough(list(r.answers.values()),
                                                             pending)):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._io(left)
        r.returned = True
        self._flush_late()
        return [self._shown(self._conns[str(a)], r, skip) for a in self.sentinels]

    def _shown(self, c: _Conn, r: _Round, skip: Collection[str]) -> SentinelView:
        if c.key in skip:
            return c.failed("event connection down", "unreachable")
        view = r.answers.get(c.key)
        if view is None:
            return c.failed("no answer yet (a slow Sentinel: its answer comes later)",
                            "pending")
        return view

    def _send(self, c: _Conn) -> None:
        """Write the rounds waiting for `c` as one pipeline, if its connection is free (else
        they go when the pipeline out is answered, or once it is connected)."""
        if c.inflight is not None or not c.waiting:
            return
        if not c.connected():
            c.start_connect()
            return
        rounds, c.waiting = c.waiting, []
        want_head = any(r.groups is None for r in rounds)
        groups = sorted({g for r in rounds for g in (r.groups or ())})
        discover = any(r.discover for r in rounds)
        cmds = ((HEAD_COMMANDS if want_head else [])
                + group_commands(groups, discover, c.whole_list))
        c.inflight = _Request(rounds, want_head, groups, discover, len(cmds), c.whole_list)
        try:
            c.send(cmds)
        except OSError as e:
            self._failed(c, describe_error(e), problem_of(e), retry=True)

    def _io(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for replies (or a connect to finish) and take them in."""
        by_sock = {c.sock: c for c in self._conns.values()
                   if c.inflight is not None and c.sock is not None}
        now = time.monotonic()
        due = min((c.inflight.sent + self.timeout_s for c in by_sock.values()
                   if c.inflight is not None), default=now + timeout_s)
        wait = max(0.0, min(timeout_s, due - now))
        try:
            readable, _, _ = select.select([self._wake_r, *by_sock], [], [], wait)
        except (OSError, ValueError):  # a socket closed under us: look at each one
            readable = list(by_sock)
        for sock in readable:
            if sock is self._wake_r:
                with contextlib.suppress(OSError):
                    while self._wake_r.recv(4096):
                        pass
            else:
                self._readable(by_sock[sock])
        now = time.monotonic()
        for c in self._conns.values():
            if c.connect_done():
                if c.connected():
                    self._send(c)
                else:
                    self._failed(c, c.connect_error, c.connect_problem)
            elif c.inflight is not None and now - c.inflight.sent > self.timeout_s:
                self._failed(c, f"TimeoutError: no reply within {self.timeout_s:g}s",
                             "unreachable")

    def _readable(self, c: _Conn) -> None:
        try:
            replies = c.receive()
        except (OSError, hiredis.ProtocolError) as e:
            # A connection the Sentinel closed (it restarted): the first use after that
            # fails. Reconnect and ask once more, so the pass still counts it.
            self._failed(c, describe_error(e), problem_of(e), retry=True)
            return
        req = c.inflight
        if req is None:
            return
        req.replies += replies
        if len(req.replies) >= req.count:
            c.inflight = None
            self._answered(c, req)
            self._send(c)

    def _failed(self, c: _Conn, error: str, problem: str, retry: bool = False) -> None:
        """`c` cannot answer: its rounds get an error view (or, once, are asked again on a
        new connection when the old one was closed by the Sentinel)."""
        c.disconnect()
        rounds = (c.inflight.rounds if c.inflight is not None else []) + c.waiting
        c.inflight, c.waiting = None, []
        if retry and not c.retried:
            c.retried = True
            c.waiting = rounds
            c.start_connect()
            return
        c.retried = False
        self._deliver(c, rounds, c.failed(error, problem), {})

    def _answered(self, c: _Conn, req: _Request) -> None:
        c.retried = False
        replies = req.replies
        first = replies[2 if req.want_head else 0] if req.groups else None
        if (not req.whole_list and isinstance(first, Exception)
                and "sentinel|master'" in str(first) and "NOPERM" in str(first)):
            # An ACL user made for an older version (SENTINEL MASTERS, not MASTER): read the
            # master entries from the whole list, as before (its cost grows with the groups).
            c.whole_list = True
            log.warning("sentinel_master_denied", sentinel=c.key,
                        detail="allow +sentinel|master for the ACL user: meanwhile every read "
                        "asks SENTINEL MASTERS (all groups)")
            c.waiting = req.rounds + c.waiting
            return
        head_view: SentinelView | None = None
        names: tuple[str, ...] | None = None
        if req.want_head:
            head_replies, replies = replies[:2], replies[2:]
            try:
                c.head = self._head(c, head_replies)
                head_view = SentinelView(sentinel=c.key, tilt=c.head.tilt, myid=c.head.myid)
                names = c.head.names
            except SentinelReplyError as e:
                problem = problem_of(e)
                why = "not a Sentinel" if problem == "not_sentinel" else "bad reply"
                head_view = c.failed(f"{why}: {e}", problem)
        by_round: dict[int, SentinelView] = {}
        if req.groups:
            view = self._groups(c, req, replies, head_view)
            by_round = {id(r): _subset(view, r.groups) for r in req.rounds
                        if r.groups is not None}
        if names is not None and not self.fixed_masters:
            known = set(self._known)
            if not known.issuperset(names):  # known at once: the pass that asked reads them
                self._known = sorted(known.union(names))
        for r in req.rounds:
            if r.groups is None and names is not None:
                r.names[c.key] = names
        self._deliver(c, req.rounds, head_view, by_round)

    def _deliver(self, c: _Conn, rounds: list[_Round], head: SentinelView | None,
                 views: dict[int, SentinelView]) -> None:
        """Record `c`'s answer in its rounds (head rounds get `head`, the others their view,
        or `head` when that is an error); complete rounds that already returned are handed to
        their `on_late`."""
        for r in rounds:
            view = head if r.groups is None else views.get(id(r), head)
            if view is None:
                continue
            r.answers[c.key] = view
            r.done.add(c.key)
            if r.asked <= r.done:
                if r.groups is None:
                    self._update_known(r)
                if r.returned and r.on_late is not None:
                    self._late.append((r.on_late, [r.answers[str(a)] for a in self.sentinels
                                                   if str(a) in r.asked]))

    def _flush_late(self) -> None:
        late, self._late = self._late, []
        for on_late, answers in late:
            on_late(answers)

    def _update_known(self, r: _Round) -> None:
        """After a complete head round: every group some Sentinel monitors is known; when every
        Sentinel answered, a group none of them monitors any more is forgotten (SENTINEL
        REMOVE) instead of staying undecided for ever."""
        if self.fixed_masters:
            return
        monitored = {n for names in r.names.values() for n in names}
        known = list(self._known)
        if len(r.names) == len(r.asked) and all(v.error is None for v in r.answers.values()):
            known = [n for n in known if n in monitored]
        self._known = sorted(monitored | set(known))

    def _head(self, c: _Conn, replies: list[Any]) -> Head:
        info, myid = replies
        if isinstance(myid, Exception) and "permission" in str(myid).lower():
            # An ACL user made for an older version: count this Sentinel by its address.
            if c.key not in self._myid_denied:
                self._myid_denied.add(c.key)
                log.warning("sentinel_myid_denied", sentinel=c.key,
                            detail="allow +sentinel|myid +sentinel|sentinels for the ACL user: "
                            "without its ID a Sentinel listed twice would vote twice")
            myid = None
        for r in (info, myid):
            if isinstance(r, Exception):
                if problem_of(r) == "not_sentinel":
                    raise NotASentinelError(describe_error(r))
                raise SentinelReplyError(describe_error(r))
        raw = (info, myid) if isinstance(info, str) and isinstance(myid, str) else None
        if raw is not None and c.head is not None and raw == c.head_raw:
            return c.head
        head = parse_head(info, myid)
        c.head_raw = raw
        return head

    def _groups(self, c: _Conn, req: _Request, replies: list[Any],
                head_view: SentinelView | None) -> SentinelView:
        if head_view is not None and head_view.error:
            return head_view
        first = replies[0] if replies else None
        if isinstance(first, Exception) and problem_of(first) in ("auth", "not_sentinel"):
            problem = problem_of(first)
            why = "not a Sentinel" if problem == "not_sentinel" else describe_error(first)
            return c.failed(why, problem)
        head = c.head or Head(False, "", ())
        try:
            view, others = parse_groups(c.key, req.groups, replies, head, req.discover,
                                        req.whole_list)
        except SentinelReplyError as e:
            return c.failed(f"bad reply: {e}", "bad_reply")
        for addr, rid in others:
            self._found.setdefault(rid, addr)
        return view

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")


@dataclass(eq=False)
class _Round:
    """One question to every Sentinel asked: head (groups None) or some groups."""

    groups: list[str] | None
    asked: set[str]
    answers: dict[str, SentinelView]  # prefilled, then replaced by each Sentinel's answer
    on_late: OnLate | None
    discover: bool
    done: set[str] = field(default_factory=set)  # Sentinels that answered this round
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)  # head: groups seen
    returned: bool = False  # the caller went on (maybe before everyone answered)


@dataclass(eq=False)
class _Request:
    """The pipeline out on a connection: the rounds it answers and the replies so far."""

    rounds: list[_Round]
    want_head: bool
    groups: list[str]
    discover: bool
    count: int
    whole_list: bool = False  # master entries from SENTINEL MASTERS (see _Conn.whole_list)
    sent: float = field(default_factory=time.monotonic)
    replies: list[Any] = field(default_factory=list)


class _Conn:
    """One Sentinel's kept connection. redis-py opens it (TCP, TLS, AUTH, CLIENT SETNAME) in
    a short-lived thread; then its socket is written and read directly, replies parsed by a
    hiredis reader of its own (redis-py's own reading would block)."""

    def __init__(self, addr: Address, auth: Auth, timeout_s: float,
                 wake: Callable[[], None]) -> None:
        self.addr = addr
        self.key = str(addr)
        self.conn = _connection(addr, auth, timeout_s)
        self.head: Head | None = None  # its last head answer
        # The replies that last head was parsed from: a quiet Sentinel sends the same bytes
        # every full pass, and parsing 1,000 groups' INFO lines costs ~0.6 ms per Sentinel,
        # in the loop thread, while a failover may be waiting.
        self.head_raw: tuple[str, str] | None = None
        self.inflight: _Request | None = None
        self.waiting: list[_Round] = []
        self.retried = False
        self.whole_list = False  # its ACL user may not run SENTINEL MASTER: ask MASTERS
        self.sock: Any = None  # set while connected
        self.connect_error = ""
        self.connect_problem = ""
        self._wake = wake
        self._connecting: threading.Thread | None = None
        self._finished = False
        self._reader: Any = None

    def failed(self, error: str, problem: str) -> SentinelView:
        """A view saying why this Sentinel cannot be used; it keeps the ID it gave before."""
        return SentinelView(sentinel=self.key, error=error, problem=problem,
                            myid=self.head.myid if self.head else "")

    def connected(self) -> bool:
        return self.sock is not None

    def start_connect(self) -> None:
        if self._connecting is not None or self.sock is not None:
            return
        self.connect_error = ""
        self._finished = False
        self._connecting = threading.Thread(target=self._connect, daemon=True,
                                            name=f"sentinel-connect-{self.key}")
        self._connecting.start()

    def _connect(self) -> None:
        try:
            self.conn.connect()
            sock = self.conn._sock  # redis-py's own socket, now handshaken
            if sock is None:
                raise redis.ConnectionError("connected without a socket")
            self._reader = hiredis.Reader(encoding="utf-8", errors="replace",
                                          replyError=redis.ResponseError)
            self.sock = sock
        except (redis.RedisError, OSError) as e:
            self.conn.disconnect()
            self.connect_error = describe_error(e)
            self.connect_problem = problem_of(e)
        finally:
            self._finished = True  # before the wake: the reader looks at it when woken
            self._wake()

    def connect_done(self) -> bool:
        """A connect just finished (once per connect): the caller sends or fails."""
        if self._connecting is None or not self._finished:
            return False
        self._connecting = None
        return True

    def send(self, cmds: list[tuple[str, ...]]) -> None:
        self.sock.sendall(b"".join(map(packed_command, cmds)))

    def receive(self) -> list[Any]:
        """Every complete reply in what the socket has now."""
        data = self.sock.recv(262144)
        if not data:
            raise ConnectionResetError("connection closed by the Sentinel")
        pending = getattr(self.sock, "pending", None)  # TLS: decrypted bytes already in
        while pending is not None and pending():
            data += self.sock.recv(262144)
        self._reader.feed(data)
        out = []
        while (reply := self._reader.gets()) is not False:
            out.append(reply)
        return out

    def disconnect(self) -> None:
        self.sock = None
        self._reader = None
        if self._connecting is None:
            self.conn.disconnect()

    def close(self) -> None:
        t = self._connecting
        if t is not None:
            t.join(self.conn.socket_connect_timeout or 1.0)
        self.sock = None
        self.conn.disconnect()


@functools.lru_cache(maxsize=16384)  # the same few commands per group, every pass
def packed_command(cmd: tuple[str, ...]) -> bytes:
    """One command in RESP (hiredis' encoder, as redis-py's own with hiredis installed)."""
    # hiredis' stub types the argument as a 1-tuple; any length is packed.
    packed: bytes = hiredis.pack_command(cmd)  # type: ignore[arg-type]
    return packed


def _subset(view: SentinelView, groups: Sequence[str]) -> SentinelView:
    """`view` restricted to `groups` (a merged pipeline answers several rounds)."""
    if view.error is not None or set(view.masters) <= set(groups):
        return view
    return dataclasses.replace(
        view, masters={g: view.masters[g] for g in groups if g in view.masters},
        group_errors={g: view.group_errors[g] for g in groups if g in view.group_errors})


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
        **NO_LIB_INFO,
        **kwargs,
    )


HintKind = Literal["event", "connected", "disconnected", "bad_event", "late_answer",
                   "haproxy_changed", "applied"]


@dataclass(frozen=True)
class Hint:
    """Something that may mean the state changed; the loop reconciles on it. From an event
    watcher (its Sentinel's events and connection), the reader (`late_answer`: the complete
    answers of a round a pass did not wait for, `views`) or an HAProxy worker
    (`haproxy_changed`: restarted, reloaded or back; `applied`: it has applied a targeted
    pass's commands, a full pass held back for them may go on)."""

    source: str  # the Sentinel ("host:port"), or the HAProxy's socket
    kind: HintKind
    received: float  # time.monotonic() when it arrived
    event: SentinelEvent | None = None
    detail: str = ""
    views: tuple[SentinelView, ...] = ()


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
                time.sleep(0)  # let the loop have the GIL now: it acts on this, we only wait


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
