"""Measuring instruments for `demo`, `drill` and the benchmarks: they watch, they never steer.

- `RespConn`: one persistent RESP2 connection with a timeout (stdlib only), for writers/readers
  that must see every error as it happens (no client-side retries hiding an outage);
- `Writer` / `Reader`: threads that write (SET key seq) or read (GET) through an HAProxy
  frontend at a fixed pace and record every attempt with its wall-clock time and the Redis node
  that answered (the server side address of the connection, `CLIENT INFO` laddr, asked once per
  connection: free per command);
- `EventRecorder`: a pub/sub subscription (`PSUBSCRIBE *`) to every Sentinel, each message
  stamped on receipt;
- `HAProxyWatcher`: polls `show servers state` and records when a server becomes routable or not.
Wall-clock times (`time.time()`) throughout, so that samples line up with the controller's
JSON log (`ts`). Every loop is bounded by a stop event and short timeouts.
Must not change anything in Redis, Sentinel or HAProxy (the writers write their own keys only).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from controller.haproxy import HAProxyClient, HAProxyError
from controller.localstack import RespError, encode_command, parse_reply
from controller.model import AdminState

HostPort = tuple[str, int]


def parse_hostport(text: str) -> HostPort:
    """`HOST:PORT` (IPv6 as `[::1]:6379`); ValueError naming the input otherwise."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: expected HOST:PORT")
    return host, int(port)


def fmt_addr(addr: HostPort) -> str:
    return f"{addr[0]}:{addr[1]}"


# --------------------------------------------------------------------------- RESP


class RespConn:
    """A persistent RESP2 connection; any socket error or timeout leaves it unusable.

    Encoding and parsing are localstack's (one RESP codec in the package)."""

    def __init__(self, addr: HostPort, timeout_s: float) -> None:
        self.addr = addr
        self.sock = socket.create_connection(addr, timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout_s)
        self.file = self.sock.makefile("rb")

    def close(self) -> None:
        try:
            self.file.close()
        finally:
            self.sock.close()

    def __enter__(self) -> RespConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pipeline(self, *commands: Sequence[str | int]) -> list[object]:
        """Send every command in one write, return every reply (error replies as RespError)."""
        self.sock.sendall(b"".join(encode_command(*c) for c in commands))
        replies: list[object] = []
        for _ in commands:
            try:
                replies.append(parse_reply(self.file.readline, self.file.read))
            except RespError as e:  # a top-level error reply: the stream is intact
                replies.append(e)
        return replies

    def command(self, *args: str | int) -> object:
        reply = self.pipeline(args)[0]
        if isinstance(reply, RespError):
            raise reply
        return reply


def laddr_of(client_info: object) -> str | None:
    """The server-side address (`laddr=`) in a `CLIENT INFO` reply: the node that answers."""
    if not isinstance(client_info, str):
        return None
    for word in client_info.split():
        if word.startswith("laddr="):
            return word[6:]
    return None


def short_error(e: BaseException | object) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:80]


# --------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class WriteSample:
    """One write attempt: `t` when its reply (or error) came back, `sent` when it was sent."""

    t: float
    sent: float
    writer: int
    seq: int
    key: str
    ok: bool
    node: str | None  # "host:port" of the Redis node on that connection, when known
    error: str = ""


@dataclass(frozen=True)
class ReadSample:
    t: float
    ok: bool
    node: str | None
    error: str = ""
    reader: int = 0


@dataclass(frozen=True)
class Mark:
    """Something that happened at `t`: a Sentinel event, an HAProxy change, the fault..."""

    t: float
    kind: str  # "+switch-master", "haproxy", "fault", "controller", ...
    source: str  # sentinel address, "backend/server", "drill", "controller"
    text: str


# --------------------------------------------------------------------------- writers/readers


class Writer(threading.Thread):
    """SET `<prefix>:<writer>:<seq>` = seq through `addr` every `interval_s`; records each try.

    `reconnect_each`: a new connection per write (as clients without pools, or pools after an
    error, do): new connections follow HAProxy's routing at once; a persistent one is held.
    On any error the connection is dropped and the next write reconnects.
    """

    def __init__(
        self,
        addr: HostPort,
        prefix: str,
        writer_id: int,
        stop: threading.Event,
        interval_s: float = 0.002,
        timeout_s: float = 1.0,
        reconnect_each: bool = False,
    ) -> None:
        super().__init__(name=f"writer-{writer_id}", daemon=True)
        self.addr = addr
        self.prefix = prefix
        self.writer_id = writer_id
        self.stop_event = stop
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.reconnect_each = reconnect_each
        self.samples: list[WriteSample] = []

    def run(self) -> None:
        conn: RespConn | None = None
        node: str | None = None
        seq = 0
        next_t = time.monotonic()
        try:
            while not self.stop_event.is_set():
                seq += 1
                key = f"{self.prefix}:{self.writer_id}:{seq}"
                sent = time.time()
                ok, error = False, ""
                try:
                    if conn is None:
                        conn = RespConn(self.addr, self.timeout_s)
                        info, reply = conn.pipeline(("CLIENT", "INFO"), ("SET", key, seq))
                        node = laddr_of(info)
                    else:
                        reply = conn.pipeline(("SET", key, seq))[0]
                    ok = reply == "OK"
                    if not ok:
                        error = short_error(reply)
                except (OSError, ConnectionError, ValueError) as e:
                    error = short_error(e) or type(e).__name__
                self.samples.append(
                    WriteSample(time.time(), sent, self.writer_id, seq, key, ok, node, error)
                )
                if conn is not None and (not ok or self.reconnect_each):
                    conn.close()
                    conn, node = None, None
                next_t = max(next_t + self.interval_s, time.monotonic())
                self.stop_event.wait(max(0.0, next_t - time.monotonic()))
        finally:
            if conn is not None:
                conn.close()


class Reader(threading.Thread):
    """GET through `addr` (a read frontend) every `interval_s`; records each try and the node.

    `reconnect_each` as for `Writer`: a persistent connection stays where HAProxy first sent
    it, a new one per read follows HAProxy's current routing."""

    def __init__(
        self,
        addr: HostPort,
        key: str,
        stop: threading.Event,
        interval_s: float = 0.005,
        timeout_s: float = 1.0,
        reconnect_each: bool = False,
        reader_id: int = 0,
    ) -> None:
        super().__init__(name=f"reader-{reader_id}", daemon=True)
        self.reconnect_each = reconnect_each
        self.reader_id = reader_id
        self.addr = addr
        self.key = key
        self.stop_event = stop
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.samples: list[ReadSample] = []

    def run(self) -> None:
        conn: RespConn | None = None
        node: str | None = None
        try:
            while not self.stop_event.is_set():
                ok, error = False, ""
                try:
                    if conn is None:
                        conn = RespConn(self.addr, self.timeout_s)
                        info, reply = conn.pipeline(("CLIENT", "INFO"), ("GET", self.key))
                        node = laddr_of(info)
                    else:
                        reply = conn.pipeline(("GET", self.key))[0]
                    ok = not isinstance(reply, RespError)
                    if not ok:
                        error = short_error(reply)
                except (OSError, ConnectionError, ValueError) as e:
                    error = short_error(e) or type(e).__name__
                self.samples.append(ReadSample(time.time(), ok, node, error, self.reader_id))
                if conn is not None and (not ok or self.reconnect_each):
                    conn.close()
                    conn, node = None, None
                self.stop_event.wait(self.interval_s)
        finally:
            if conn is not None:
                conn.close()


# --------------------------------------------------------------------------- sentinel events


class EventRecorder:
    """`PSUBSCRIBE *` on every Sentinel; every message (but hellos) becomes a Mark."""

    def __init__(self, sentinels: Sequence[HostPort], timeout_s: float = 1.0) -> None:
        self.sentinels = list(sentinels)
        self.timeout_s = timeout_s
        self.marks: list[Mark] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._subscribed: set[str] = set()
        self._threads = [
            threading.Thread(target=self._run, args=(s,), name=f"events-{fmt_addr(s)}",
                             daemon=True)
            for s in self.sentinels
        ]
        self.listeners: list[Callable[[Mark], None]] = []

    def start(self, wait_s: float = 5.0) -> bool:
        """Start; True when every Sentinel confirmed the subscription within `wait_s`."""
        for t in self._threads:
            t.start()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self._subscribed) == len(self.sentinels):
                    return True
            time.sleep(0.01)
        return False

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2.0)

    def snapshot(self) -> list[Mark]:
        with self._lock:
            return list(self.marks)

    def _add(self, mark: Mark) -> None:
        with self._lock:
            self.marks.append(mark)
        for listener in self.listeners:
            listener(mark)

    def _run(self, addr: HostPort) -> None:
        name = fmt_addr(addr)
        while not self._stop.is_set():
            client: Any = redis.Redis(
                host=addr[0], port=addr[1], protocol=2, decode_responses=True,
                socket_connect_timeout=self.timeout_s, socket_timeout=self.timeout_s,
                retry=Retry(NoBackoff(), 0),
            )
            pubsub = client.pubsub()
            try:
                pubsub.psubscribe("*")
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=0.1)
                    if not msg:
                        continue
                    now = time.time()
                    if msg.get("type") == "psubscribe":
                        with self._lock:
                            self._subscribed.add(name)
                        continue
                    channel = str(msg.get("channel"))
                    if msg.get("type") != "pmessage" or channel == "__sentinel__:hello":
                        continue
                    self._add(Mark(now, channel, name, str(msg.get("data"))))
            except (redis.RedisError, OSError):
                with self._lock:
                    self._subscribed.discard(name)
                self._stop.wait(0.2)
            finally:
                pubsub.close()
                client.close()


def event_is_for(mark: Mark, master: str) -> bool:
    """Whether a Sentinel event concerns master group `master` (by the event's text)."""
    words = mark.text.split()
    if mark.kind == "+switch-master":
        return words[:1] == [master]
    if "@" in words:
        i = words.index("@")
        return words[i + 1 : i + 2] == [master]
    return len(words) >= 2 and words[0] == "master" and words[1] == master


# --------------------------------------------------------------------------- haproxy


class HAProxyWatcher(threading.Thread):
    """Polls an HAProxy's servers of `backends`; a change of routability becomes a Mark.

    Routable = admin ready and operationally running (check passing or no check).
    """

    def __init__(
        self, socket_path: str, backends: Sequence[str], interval_s: float = 0.02
    ) -> None:
        super().__init__(name="haproxy-watch", daemon=True)
        self.client = HAProxyClient(socket_path, timeout_s=1.0)
        self.backends = set(backends)
        self.interval_s = interval_s
        self.marks: list[Mark] = []
        self.current: dict[str, bool] = {}
        self.stop_event = threading.Event()

    def poll(self) -> dict[str, bool]:
        state = self.client.state()
        out: dict[str, bool] = {}
        for be, servers in state.backends.items():
            if be not in self.backends:
                continue
            for srv in servers.values():
                out[f"{be}/{srv.name}"] = srv.admin is AdminState.READY and srv.op_state == 2
        return out

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                now_state = self.poll()
            except HAProxyError:
                now_state = {}
            now = time.time()
            for ref, routable in sorted(now_state.items()):
                if self.current.get(ref) != routable and ref in self.current:
                    self.marks.append(Mark(now, "haproxy", ref, "UP" if routable else "DOWN"))
                self.current[ref] = routable
            self.stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(2.0)


# --------------------------------------------------------------------------- sentinel queries


def sentinel_command(addr: HostPort, *args: str | int, timeout_s: float = 1.0) -> object:
    with RespConn(addr, timeout_s) as c:
        return c.command(*args)


def current_master(sentinels: Sequence[HostPort], name: str) -> str | None:
    """The master address most Sentinels name now (`host:port`), None without a majority."""
    votes: dict[str, int] = {}
    for s in sentinels:
        try:
            reply = sentinel_command(s, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", name,
                                     timeout_s=0.5)
        except (OSError, ConnectionError, RespError, ValueError):
            continue
        if isinstance(reply, list) and len(reply) == 2:
            a = f"{reply[0]}:{reply[1]}"
            votes[a] = votes.get(a, 0) + 1
    if not votes:
        return None
    best, n = max(votes.items(), key=lambda kv: kv[1])
    return best if n >= len(sentinels) // 2 + 1 else None


def read_back(addr: HostPort, keys: Sequence[str], chunk: int = 500) -> dict[str, str | None]:
    """Values of `keys` on the node at `addr` (MGET in chunks)."""
    out: dict[str, str | None] = {}
    with RespConn(addr, 5.0) as c:
        for i in range(0, len(keys), chunk):
            part = list(keys[i : i + chunk])
            reply = c.command("MGET", *part)
            if not isinstance(reply, list):
                raise RespError(f"MGET: unexpected reply {reply!r:.60}")
            for k, v in zip(part, reply, strict=True):
                out[k] = None if v is None else str(v)
    return out
