"""Sentinel adapter: the only module that talks to Sentinels.

Two jobs, both per Sentinel:
- `SentinelReader`: one pipelined round trip per Sentinel (all Sentinels in parallel, one
  thread each) giving the groups' address, config-epoch, flags and replicas, and, when a full
  pass starts, each Sentinel's TILT state, ID and groups;
- `EventWatcher`: a thread holding a pub/sub connection (`PSUBSCRIBE *`). redis-py does not
  notice a hung Sentinel and reconnects silently after a restart (facts 0.4), so the watcher
  disables redis-py's retries, pings on the pub/sub connection itself, declares the
  connection dead when a pong is late, and reconnects on its own, reporting each
  (re)connect and loss as a hint.
Must not decide anything: it reports what Sentinels say, parsed into frozen values.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

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


#: `enough(answers, pending)`: whether a pass may go on with the answers it has while
#: `pending` Sentinels have not answered yet (decide.decidable for each group read).
Enough = Callable[[list[SentinelView], int], bool]
#: Called (from an asking thread) with every Sentinel's answer once a round that was cut
#: short by `enough` is complete: the caller checks whether the late answers change a verdict.
OnLate = Callable[[list[SentinelView]], None]


class SentinelReader:
    """Reads groups from every Sentinel; all Sentinels are asked at once, each by its own
    thread on its own kept connection (`_Asker`), so a slow or hung Sentinel never holds the
    others, nor the caller once it has `enough` answers.

    `head()` (when a full pass starts) asks each Sentinel its TILT state, its ID and every
    group it monitors (`INFO sentinel`, `SENTINEL MYID`); `read(groups)` asks the groups' master
    entry, address and replicas, and answers with the last head each Sentinel gave. Requests
    that queue up behind a slow Sentinel are merged into one pipeline; a connection serves
    one pipeline at a time, in order, so a later answer from a Sentinel is never older than an
    earlier one.
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
        self._cond = threading.Condition()
        self._askers = {str(s): _Asker(self, s) for s in self.sentinels}
        self._known: list[str] = list(masters)
        self._found: dict[str, Address] = {}  # run ID -> address, from discovering reads
        self._myid_denied: set[str] = set()

    def close(self) -> None:
        for a in self._askers.values():
            a.stop()

    @property
    def master_names(self) -> list[str]:
        return list(self._known)

    def head(self, skip: Collection[str] = (), patient: bool = False) -> list[SentinelView]:
        """Every Sentinel's TILT state and ID (no group), in configuration order; updates the
        known groups (a group no Sentinel monitors any more is forgotten once every Sentinel
        answered). Waits for a majority of the Sentinels asked (every one when `patient`);
        a late answer still updates what `read` reports for that Sentinel."""
        def majority(answers: list[SentinelView], pending: int) -> bool:
            return len(answers) > (len(answers) + pending) // 2
        return self._round(None, skip, {}, None if patient else majority, None, False)

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
        asked: a hung one would hold the pass for a whole timeout. `prefill` counts as a
        Sentinel's answer until its own comes. Returns as soon as `enough` says so (a Sentinel
        still pending shows as an error view with problem `pending`), else when all answered
        or after the timeout; `on_late` then gets the complete answers. `discover`: also ask
        each group's other Sentinels (see `discover()`)."""
        return self._round(list(groups), skip, prefill or {}, enough, on_late, discover)

    def discover(self) -> list[Address]:
        """Sentinels listed by the others (reads with `discover`) whose ID is not known yet,
        whatever address they were listed at: they are read from now on; returns them."""
        with self._cond:
            known_ids = {a.head.myid for a in self._askers.values() if a.head is not None}
            found = {rid: addr for rid, addr in self._found.items() if rid not in known_ids}
            self._found.clear()
        added: list[Address] = []
        for addr in found.values():
            if str(addr) in self._askers:
                continue
            self.sentinels.append(addr)
            self._askers[str(addr)] = _Asker(self, addr)
            added.append(addr)
        return added

    # -- rounds --------------------------------------------------------------------------
    def _round(self, groups: list[str] | None, skip: Collection[str],
               prefill: dict[str, SentinelView], enough: Enough | None,
               on_late: OnLate | None, discover: bool) -> list[SentinelView]:
        askers = list(self._askers.values())
        asked = [a for a in askers if a.key not in skip]
        r = _Round(groups, {a.key for a in asked}, dict(prefill), on_late, discover)
        for a in asked:
            a.submit(r)
        deadline = time.monotonic() + self.timeout_s + 0.05
        with self._cond:
            while True:
                pending = len(r.asked - r.done - set(r.answers))  # prefilled ones count
                if not pending or (enough is not None and enough(list(r.answers.values()),
                                                                 pending)):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            r.returned = True
            return [self._shown(a, r, skip) for a in askers]

    def _shown(self, a: _Asker, r: _Round, skip: Collection[str]) -> SentinelView:
        if a.key in skip:
            return a.failed("event connection down", "unreachable")
        view = r.answers.get(a.key)
        if view is None:
            return a.failed("no answer yet (a slow Sentinel: its answer comes later)",
                            "pending")
        return view

    def _delivered(self, asker: _Asker, rounds: list[_Round], head: SentinelView | None,
                   views: dict[int, SentinelView], names: tuple[str, ...] | None = None,
                   found: Sequence[tuple[Address, str]] = ()) -> None:
        """An asker's answer to `rounds` (called by its thread): `head` for head rounds,
        `views` by round id for the others, `names` the groups its head listed. Record it,
        wake the waiting pass, and hand complete rounds that were cut short to `on_late`."""
        late: list[tuple[OnLate, list[SentinelView]]] = []
        with self._cond:
            for addr, rid in found:
                self._found.setdefault(rid, addr)
            if names is not None and not self.fixed_masters:
                new = [n for n in names if n not in self._known]
                if new:  # known at once, so that the pass that asked reads them
                    self._known = sorted({*self._known, *new})
            for r in rounds:
                view = head if r.groups is None else views.get(id(r))
                if view is None:
                    continue
                r.answers[asker.key] = view
                r.done.add(asker.key)
                if r.groups is None and names is not None:
                    r.names[asker.key] = names
                if r.asked <= r.done:
                    if r.groups is None:
                        self._update_known(r)
                    if r.returned and r.on_late is not None:
                        late.append((r.on_late, [r.answers[a.key] for a in self._askers.values()
                                                  if a.key in r.asked]))
            self._cond.notify_all()
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


class _Asker:
    """One Sentinel's kept connection and the thread that asks on it.

    Rounds that queue while it is busy are merged into one pipeline (the head commands once,
    the union of the groups); every round gets its answer from that pipeline. Errors are
    delivered as views, never raised: a pass must not die from one Sentinel.
    """

    def __init__(self, reader: SentinelReader, addr: Address) -> None:
        self.reader = reader
        self.addr = addr
        self.key = str(addr)
        self.conn = _connection(addr, reader.auth, reader.timeout_s)
        self.head: Head | None = None  # its last head answer
        self._queue: list[_Round] = []
        self._stop = False
        self._thread: threading.Thread | None = None

    def submit(self, r: _Round) -> None:
        with self.reader._cond:
            self._queue.append(r)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"sentinel-ask-{self.key}")
                self._thread.start()
            self.reader._cond.notify_all()

    def stop(self) -> None:
        with self.reader._cond:
            self._stop = True
            self.reader._cond.notify_all()
        if self._thread is not None:
            self._thread.join(self.reader.timeout_s + 1)
        self.conn.disconnect()

    def failed(self, error: str, problem: str) -> SentinelView:
        """A view saying why this Sentinel cannot be used; it keeps the ID it gave before."""
        return SentinelView(sentinel=self.key, error=error, problem=problem,
                            myid=self.head.myid if self.head else "")

    def _run(self) -> None:
        cond = self.reader._cond
        while True:
            with cond:
                while not self._queue and not self._stop:
                    cond.wait()
                if self._stop:
                    return
                rounds, self._queue = self._queue, []
            try:
                self._answer(rounds)
            except Exception:  # a bug: say so, answer with an error, keep the thread alive
                log.exception("unexpected_error", where="sentinel reader",
                              sentinel=self.key)
                bad = self.failed("internal error while reading", "bad_reply")
                self.reader._delivered(self, rounds, bad, {id(r): bad for r in rounds})

    def _answer(self, rounds: list[_Round]) -> None:
        want_head = any(r.groups is None for r in rounds)
        groups = sorted({g for r in rounds for g in (r.groups or ())})
        discover = any(r.discover for r in rounds)
        cmds = (HEAD_COMMANDS if want_head else []) + group_commands(groups, discover)
        head_view: SentinelView | None = None
        names: tuple[str, ...] | None = None
        by_round: dict[int, SentinelView] = {}
        found: list[tuple[Address, str]] = []
        try:
            replies = self._ask(cmds)
        except redis.RedisError as e:  # timeout, reset: the stream is unusable
            self.conn.disconnect()
            bad = self.failed(describe_error(e), problem_of(e))
            self.reader._delivered(self, rounds, bad, {id(r): bad for r in rounds})
            return
        if want_head:
            head_replies, replies = replies[:2], replies[2:]
            try:
                self.head = self._head(head_replies)
                head_view = SentinelView(sentinel=self.key, tilt=self.head.tilt,
                                         myid=self.head.myid)
                names = self.head.names
            except SentinelReplyError as e:
                problem = problem_of(e)
                why = "not a Sentinel" if problem == "not_sentinel" else "bad reply"
                head_view = self.failed(f"{why}: {e}", problem)
        if groups:
            view = self._groups(groups, replies, discover, found, head_view)
            for r in rounds:
                if r.groups is not None:
                    by_round[id(r)] = _subset(view, r.groups)
        self.reader._delivered(self, rounds, head_view, by_round, names, found)

    def _ask(self, cmds: list[tuple[str, ...]]) -> list[Any]:
        try:
            return self._pipeline(cmds)
        except redis.ConnectionError as e:
            if isinstance(e, redis.TimeoutError):
                raise
            # A connection the Sentinel closed (it restarted): the first use after that
            # fails. Reconnect and ask once more, so the pass still counts it.
            self.conn.disconnect()
            return self._pipeline(cmds)

    def _pipeline(self, cmds: list[tuple[str, ...]]) -> list[Any]:
        self.conn.send_packed_command(self.conn.pack_commands(cmds), check_health=False)
        return _read_replies(self.conn, len(cmds))

    def _head(self, replies: list[Any]) -> Head:
        info, myid = replies
        if isinstance(myid, redis.ResponseError) and "permission" in str(myid):
            # An ACL user made for an older version: count this Sentinel by its address.
            if self.key not in self.reader._myid_denied:
                self.reader._myid_denied.add(self.key)
                log.warning("sentinel_myid_denied", sentinel=self.key,
                            detail="allow +sentinel|myid +sentinel|sentinels for the ACL user: "
                            "without its ID a Sentinel listed twice would vote twice")
            myid = None
        for r in (info, myid):
            if isinstance(r, Exception):
                if problem_of(r) == "not_sentinel":
                    raise NotASentinelError(describe_error(r))
                raise SentinelReplyError(describe_error(r))
        return parse_head(info, myid)

    def _groups(self, groups: list[str], replies: list[Any], discover: bool,
                found: list[tuple[Address, str]], head_view: SentinelView | None
                ) -> SentinelView:
        if head_view is not None and head_view.error:
            return head_view
        first = replies[0] if replies else None
        if isinstance(first, Exception) and problem_of(first) in ("auth", "not_sentinel"):
            problem = problem_of(first)
            why = "not a Sentinel" if problem == "not_sentinel" else describe_error(first)
            return self.failed(why, problem)
        head = self.head or Head(False, "", ())
        try:
            view, others = parse_groups(self.key, groups, replies, head, discover)
        except SentinelReplyError as e:
            return self.failed(f"bad reply: {e}", "bad_reply")
        found += [(addr, rid) for addr, rid in others]
        return view


def _subset(view: SentinelView, groups: Sequence[str]) -> SentinelView:
    """`view` restricted to `groups` (a merged pipeline answers several rounds)."""
    if view.error is not None or set(view.masters) <= set(groups):
        return view
    return dataclasses.replace(
        view, masters={g: view.masters[g] for g in groups if g in view.masters},
        group_errors={g: view.group_errors[g] for g in groups if g in view.group_errors})


def _read_replies(conn: Any, count: int) -> list[Any]:
    replies: list[Any] = []
    for _ in range(count):
        try:
            replies.append(conn.read_response())
        except redis.ResponseError as e:  # one refused command; the stream is intact
            replies.append(e)
    return replies


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


HintKind = Literal["event", "connected", "disconnected", "bad_event", "late_answer",
                   "haproxy_changed"]


@dataclass(frozen=True)
class Hint:
    """Something that may mean the state changed; the loop reconciles on it. From an event
    watcher (its Sentinel's events and connection), the reader (`late_answer`: the complete
    answers of a round a pass did not wait for, `views`) or an HAProxy worker
    (`haproxy_changed`: restarted, reloaded or back)."""

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
