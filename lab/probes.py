"""Measuring instruments for `demo`, `drill`, the tests and the benchmarks: they watch, they
never steer.

- `Writer` / `Reader`: threads that write (SET key seq) or read (GET) through an HAProxy
  frontend at a fixed pace and record every attempt with its wall-clock time and the Redis node
  that answered (the server side address of the connection, `CLIENT INFO` laddr, asked once per
  connection: free per command), on lab.resp connections, so that every error is seen as it
  happens (no client-side retries hiding an outage); `ReaderProcess` runs a `Reader` in a
  process of its own (the drill's readers: no GIL shared with the writers), at a raised
  priority where it may (root): on two cores shared by three stacks, a reader woken late by
  any other program's burst measured that burst, not the setup's routing (below);
- `EventRecorder`: a pub/sub subscription (`PSUBSCRIBE *`) to every Sentinel, each message
  stamped on receipt;
- `HAProxyWatcher`: polls `show servers state` and records when a server becomes routable or not.
Wall-clock times (`time.time()`) throughout, so that samples line up with the controller's
JSON log (`ts`). Every loop is bounded by a stop event and short timeouts.
Must not change anything in Redis, Sentinel or HAProxy (the writers write their own keys only).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from controller.haproxy import HAProxyClient, HAProxyError
from controller.model import Address
from controller.sentinel_parse import SentinelReplyError, parse_event
from lab import resp
from lab.resp import RespConn, RespError

#: `nice` of the reader processes (root only). Measured (3-node drill, master SIGKILL and old
#: master returns, 3 runs each, every setup at once): at the default priority the worst reader's
#: read outage spread 9.0-11.1 ms for classic and 10.0-16.5 ms for the controller, its own
#: reads sent up to 3.5 ms late; raised, 10.2-10.4 and 10.3-10.9 ms.
READER_NICE = -10


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
    """One read attempt: `t` when its reply (or error) came back, `sent` when it was sent."""

    t: float
    ok: bool
    node: str | None
    error: str = ""
    reader: int = 0
    sent: float = 0.0


@dataclass(frozen=True)
class Mark:
    """Something that happened at `t`: a Sentinel event, an HAProxy change, the fault..."""

    t: float
    kind: str  # "+switch-master", "haproxy", "fault", "controller", ...
    source: str  # sentinel address, "backend/server", "drill", "controller"
    text: str


# --------------------------------------------------------------------------- writers/readers


class _Client(threading.Thread):
    """A request through an HAProxy frontend every `interval_s`, each attempt recorded.

    `reconnect_each`: a new connection per request (as clients without pools, or pools after
    an error, do): new connections follow HAProxy's routing at once; a persistent one is held
    where HAProxy first sent it. On any error the connection is dropped and the next request
    reconnects. Subclasses say what to send and what to record.
    """

    def __init__(self, name: str, addr: Address, stop: threading.Event, interval_s: float,
                 timeout_s: float, reconnect_each: bool, password: str | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self.addr = addr
        self.password = password  # AUTH first on each connection (a password-protected Redis)
        self.stop_event = stop
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.reconnect_each = reconnect_each

    def request(self, seq: int) -> tuple[str | int, ...]:
        raise NotImplementedError

    def accepted(self, reply: object) -> bool:
        raise NotImplementedError

    def record(self, seq: int, sent: float, ok: bool, node: str | None, error: str) -> None:
        raise NotImplementedError

    def run(self) -> None:
        conn: RespConn | None = None
        node: str | None = None
        seq = 0
        next_t = time.monotonic()
        try:
            while not self.stop_event.is_set():
                seq += 1
                sent = time.time()
                ok, error = False, ""
                try:
                    if conn is None:
                        conn = RespConn(self.addr, self.timeout_s, self.password)
                        info, reply = conn.pipeline(("CLIENT", "INFO"), self.request(seq))
                        node = laddr_of(info)
                    else:
                        reply = conn.pipeline(self.request(seq))[0]
                    ok = self.accepted(reply)
                    if not ok:
                        error = short_error(reply)
                except (OSError, ConnectionError, ValueError, RespError) as e:
                    error = short_error(e) or type(e).__name__
                self.record(seq, sent, ok, node, error)
                if conn is not None and (not ok or self.reconnect_each):
                    conn.close()
                    conn, node = None, None
                next_t = max(next_t + self.interval_s, time.monotonic())
                self.stop_event.wait(max(0.0, next_t - time.monotonic()))
        finally:
            if conn is not None:
                conn.close()


class Writer(_Client):
    """SET `<prefix>:<writer>:<seq>` = seq through a write frontend; records each try."""

    def __init__(
        self,
        addr: Address,
        prefix: str,
        writer_id: int,
        stop: threading.Event,
        interval_s: float = 0.002,
        timeout_s: float = 1.0,
        reconnect_each: bool = False,
        password: str | None = None,
    ) -> None:
        super().__init__(f"writer-{writer_id}", addr, stop, interval_s, timeout_s,
                         reconnect_each, password)
        self.prefix = prefix
        self.writer_id = writer_id
        self.samples: list[WriteSample] = []

    def key(self, seq: int) -> str:
        return f"{self.prefix}:{self.writer_id}:{seq}"

    def request(self, seq: int) -> tuple[str | int, ...]:
        return ("SET", self.key(seq), seq)

    def accepted(self, reply: object) -> bool:
        return reply == "OK"

    def record(self, seq: int, sent: float, ok: bool, node: str | None, error: str) -> None:
        self.samples.append(
            WriteSample(time.time(), sent, self.writer_id, seq, self.key(seq), ok, node, error)
        )

    def acked(self, since: float = 0.0, until: float = float("inf")) -> list[WriteSample]:
        """Acknowledged writes, those whose reply came in (since, until] (wall clock)."""
        return [w for w in self.samples if w.ok and since < w.t <= until]


class Reader(_Client):
    """GET `key` through a read frontend; records each try and the node that answered."""

    def __init__(
        self,
        addr: Address,
        key: str,
        stop: threading.Event,
        interval_s: float = 0.005,
        timeout_s: float = 1.0,
        reconnect_each: bool = False,
        reader_id: int = 0,
    ) -> None:
        super().__init__(f"reader-{reader_id}", addr, stop, interval_s, timeout_s,
                         reconnect_each)
        self.key = key
        self.reader_id = reader_id
        self.samples: list[ReadSample] = []

    def request(self, seq: int) -> tuple[str | int, ...]:
        return ("GET", self.key)

    def accepted(self, reply: object) -> bool:
        return not isinstance(reply, RespError)

    def record(self, seq: int, sent: float, ok: bool, node: str | None, error: str) -> None:
        self.samples.append(ReadSample(time.time(), ok, node, error, self.reader_id, sent))


class ReaderProcess(threading.Thread):
    """A `Reader` in a process of its own, its samples streamed back into `samples`.

    The drill's writers, its event recorder and its HAProxy watcher are threads of the drill's
    process and share one GIL: a reader thread among them wakes late exactly when the writes
    come back after a failover (writers reconnecting, 1 write per ms each), so a setup that
    restores writes sooner was charged for it in its read outage (bench/RESULTS.md). An
    application's readers do not wait for another program's writers. The child (spawned: the
    drill's process has threads) runs the same `Reader`; this thread only relays its samples.
    """

    SEND_EVERY_S = 0.05  # the child hands over its new samples this often
    START_S = 10.0  # bound on the child's start-up (imports)

    def __init__(self, addr: Address, key: str, stop: threading.Event,
                 interval_s: float = 0.005, timeout_s: float = 1.0,
                 reconnect_each: bool = False, reader_id: int = 0) -> None:
        super().__init__(name=f"reader-process-{reader_id}", daemon=True)
        self.args = (addr, key, interval_s, timeout_s, reconnect_each, reader_id)
        self.stop_event = stop
        self.reader_id = reader_id
        self.samples: list[ReadSample] = []
        self.ready = threading.Event()  # the child's reader runs
        self.error = ""
        self.pid: int | None = None  # the child's

    def run(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        here, there = ctx.Pipe()
        proc = ctx.Process(target=_reader_child, args=(there, *self.args), daemon=True,
                           name=f"reader-{self.reader_id}")
        proc.start()
        self.pid = proc.pid
        there.close()
        stopping = False
        deadline = time.monotonic() + self.START_S
        try:
            while True:
                if self.stop_event.is_set() and not stopping:
                    here.send("stop")
                    stopping = True
                    deadline = time.monotonic() + self.START_S
                if not self.ready.is_set() and time.monotonic() > deadline:
                    self.error = "reader process did not start"
                    return
                if stopping and time.monotonic() > deadline:
                    self.error = "reader process did not stop"
                    return
                if not here.poll(0.02):
                    continue
                batch = here.recv()
                if batch is None:  # the child stopped and sent everything
                    return
                self.ready.set()
                self.samples.extend(batch)
        except (EOFError, OSError) as e:
            self.error = f"reader process: {e or type(e).__name__}"
        finally:
            self.ready.set()
            proc.join(2.0)
            if proc.is_alive():
                proc.kill()  # by its PID (multiprocessing keeps it)
                proc.join(2.0)
            here.close()


def _reader_child(conn: Any, addr: Address, key: str, interval_s: float, timeout_s: float,
                  reconnect_each: bool, reader_id: int) -> None:
    """`ReaderProcess`'s child: run a `Reader`, send new samples every SEND_EVERY_S."""
    # Not root (no CAP_SYS_NICE): the reader runs at the default priority.
    with contextlib.suppress(OSError):
        os.nice(READER_NICE)
    stop = threading.Event()
    reader = Reader(addr, key, stop, interval_s, timeout_s, reconnect_each, reader_id)
    reader.start()
    try:
        conn.send([])  # ready
        sent = 0
        stopping = False
        while reader.is_alive():
            if not stopping and conn.poll(ReaderProcess.SEND_EVERY_S):
                conn.recv()  # "stop"
                stop.set()
                stopping = True
            elif stopping:
                reader.join(ReaderProcess.SEND_EVERY_S)
            n = len(reader.samples)
            if n > sent:
                conn.send(reader.samples[sent:n])
                sent = n
        conn.send(reader.samples[sent:])
        conn.send(None)
    except (EOFError, OSError):  # the drill went away: stop quietly, nobody reads the rest
        stop.set()
        reader.join(ReaderProcess.START_S)
    finally:
        conn.close()


# --------------------------------------------------------------------------- sentinel events


class EventRecorder:
    """`PSUBSCRIBE *` on every Sentinel; every message (but hellos) becomes a Mark."""

    def __init__(self, sentinels: Sequence[Address], timeout_s: float = 1.0) -> None:
        self.sentinels = list(sentinels)
        self.timeout_s = timeout_s
        self.marks: list[Mark] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._subscribed: set[str] = set()
        self._threads = [
            threading.Thread(target=self._run, args=(s,), name=f"events-{s}", daemon=True)
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

    def _run(self, addr: Address) -> None:
        name = str(addr)
        while not self._stop.is_set():
            client: Any = redis.Redis(
                host=addr.host, port=addr.port, protocol=2, decode_responses=True,
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
    """Whether a Sentinel event concerns master group `master` (by the daemon's own parser)."""
    try:
        return parse_event(mark.kind, mark.text).master == master
    except SentinelReplyError:
        return False


# --------------------------------------------------------------------------- haproxy


class HAProxyWatcher(threading.Thread):
    """Polls an HAProxy's servers of `backends`; a change of routability becomes a Mark."""

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
        return {
            f"{be}/{srv.name}": srv.routable
            for be, servers in state.backends.items() if be in self.backends
            for srv in servers.values()
        }

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


def current_master(sentinels: Sequence[Address], name: str) -> str | None:
    """The master address most Sentinels name now (`host:port`), None without a majority."""
    votes: dict[str, int] = {}
    for s in sentinels:
        try:
            reply = resp.command(s, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", name, timeout_s=0.5)
        except (OSError, RespError, ValueError):
            continue
        if isinstance(reply, list) and len(reply) == 2:
            a = f"{reply[0]}:{reply[1]}"
            votes[a] = votes.get(a, 0) + 1
    if not votes:
        return None
    best, n = max(votes.items(), key=lambda kv: kv[1])
    return best if n >= len(sentinels) // 2 + 1 else None


def replica_entries(sentinels: Sequence[Address], name: str) -> list[dict[str, str]]:
    """Every Sentinel's `SENTINEL REPLICAS name` entries (fields as strings), in order."""
    out: list[dict[str, str]] = []
    for s in sentinels:
        try:
            reply = resp.command(s, "SENTINEL", "REPLICAS", name)
        except (OSError, RespError, ValueError):
            continue
        for entry in reply if isinstance(reply, list) else []:
            try:
                out.append(resp.field_pairs(entry))
            except (RespError, ValueError):
                continue
    return out


def read_back(addr: Address, keys: Sequence[str], chunk: int = 500) -> dict[str, str | None]:
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
