"""Replayed Sentinels for benchmarks of the real daemon at N groups (bench/daemon_rss.py,
bench/hot_path.py).

A real Sentinel cannot monitor 1,000 masters on one machine (3 Sentinels would each ping 2,000
Redis nodes and flood each other with hello messages), so small RESP2 servers (threads, stdlib
sockets, each on its own loopback address) answer exactly what the daemon sends, with the
captured real replies of tests/data copied for every group `gI` (its name and port):

- `CLIENT SETNAME` / `SETINFO` (+OK), `PING` (+PONG, or `pong` pushes once subscribed),
  `PSUBSCRIBE *`, `INFO sentinel` (the captured text with one `masterI` line per group, as a
  real Sentinel writes it), `SENTINEL MASTERS`, `SENTINEL MASTER g`, `SENTINEL MYID`,
  `SENTINEL GET-MASTER-ADDR-BY-NAME g`, `SENTINEL REPLICAS g`, `SENTINEL SENTINELS g` (the other
  replay servers, by their IDs); anything else is answered with an error and counted;
- a group is in one of two captured healthy states: node `a` master with `b` a linked replica
  (tests/data/sentinel_steady.json) or the reverse (sentinel_converted.json), at a config-epoch
  the bench chooses; `failover(group)` moves it to the other state at the next epoch on every
  replay server and publishes `+switch-master` on every subscribed connection, as each real
  Sentinel does;
- `delay_s` makes one server answer its command connections that much later (a slow or far
  Sentinel: the replies are computed at once and sent after the delay, in order); its pub/sub
  connection is not delayed;
- `start_replay` runs each server in a process of its own (`ReplayProcess`), as three
  Sentinels run, so that the bench's own work never delays a reply.
Must not be used for anything but benchmarks: it is not a Sentinel.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import queue
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
BASE_PORT = 10000  # group gI's nodes listen on BASE_PORT + I (as reconcile_scale.py generates)
HOSTS = ("127.0.0.20", "127.0.0.21", "127.0.0.22")
STATES = ("steady", "converted")  # node a master / node b master


def resp(value: Any) -> bytes:
    """RESP2 encoding of a reply: str -> bulk, list -> array, None -> null array, int."""
    if value is None:
        return b"*-1\r\n"
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, str):
        b = value.encode()
        return b"$%d\r\n%s\r\n" % (len(b), b)
    if isinstance(value, list):
        return b"*%d\r\n" % len(value) + b"".join(resp(v) for v in value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def parse_commands(buf: bytearray) -> tuple[list[list[str]], int]:
    """Complete RESP2 commands (arrays of bulk strings) at the start of `buf`, bytes used."""
    out: list[list[str]] = []
    pos = 0
    n = len(buf)
    while pos < n:
        if buf[pos:pos + 1] != b"*":
            raise ValueError(f"not a RESP array: {bytes(buf[pos:pos + 20])!r}")
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            break
        count = int(buf[pos + 1:eol])
        p = eol + 2
        args: list[str] = []
        for _ in range(count):
            eol = buf.find(b"\r\n", p)
            if eol < 0:
                break
            size = int(buf[p + 1:eol])
            if eol + 2 + size + 2 > n:
                break
            args.append(buf[eol + 2:eol + 2 + size].decode())
            p = eol + 2 + size + 2
        if len(args) < count:
            break
        out.append(args)
        pos = p
    return out, pos


class Templates:
    """Captured replies of one Sentinel for group `redis1` in each state, as JSON text to be
    instantiated per group (name and port replaced, config-epoch set)."""

    def __init__(self, index: int) -> None:
        self.by_state: dict[str, str] = {}
        self.info_text = ""
        self.myid = ""
        for state in STATES:
            doc = json.loads((DATA / f"sentinel_{state}.json").read_text())
            captured = doc["sentinels"][index]
            r = doc["resp2"][captured]
            self.port = doc["nodes"]["redis1a"].rsplit(":", 1)[1]
            self.by_state[state] = json.dumps({
                "master": r["SENTINEL MASTERS"][0],
                "addr": r["SENTINEL GET-MASTER-ADDR-BY-NAME redis1"],
                "replicas": r["SENTINEL REPLICAS redis1"],
            })
            if state == "steady":
                self.info_text = doc["info_text"][captured]
                self.myid = r["SENTINEL MYID"]

    def group(self, i: int, state: str, epoch: int) -> dict[str, Any]:
        g: dict[str, Any] = json.loads(self.by_state[state].replace('"redis1"', f'"g{i}"')
                                       .replace(self.port, str(BASE_PORT + i)))
        m = g["master"]
        m[m.index("config-epoch") + 1] = str(epoch)
        return g


class ReplayServer:
    """A RESP2 server answering the daemon's Sentinel commands for groups g0..gN-1."""

    def __init__(self, index: int, n: int, port: int, peers: list[tuple[str, int, str]],
                 delay_s: float = 0.0) -> None:
        self.index = index
        self.host = HOSTS[index]
        self.port = port
        self.delay_s = delay_s
        self.templates = Templates(index)
        self.n = n
        self.counts: Counter[str] = Counter()
        self.unknown: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._entries: list[bytes] = []
        self._addr: list[bytes] = []
        self._replicas: list[bytes] = []
        self.state = ["steady"] * n
        self.epoch = [0] * n
        for i in range(n):
            self._set(i)
        head = [ln for ln in self.templates.info_text.split("\r\n")
                if ln and not ln.startswith("master")]
        head = [f"sentinel_masters:{n}" if ln.startswith("sentinel_masters:") else ln
                for ln in head]
        lines = head + [f"master{i}:name=g{i},status=ok,address=127.0.0.2:{BASE_PORT + i},"
                        "slaves=1,sentinels=3" for i in range(n)]
        self._info = resp("\r\n".join(lines) + "\r\n")
        self._myid = resp(self.templates.myid)
        self._peers = peers  # (host, port, myid) of the other replay servers
        self._subscribers: list[tuple[socket.socket, threading.Lock]] = []
        self._listener = socket.create_server((self.host, port))
        self._listener.settimeout(0.2)
        self._threads = [threading.Thread(target=self._accept, daemon=True,
                                          name=f"replay-{self.host}")]
        self._threads[0].start()

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def _set(self, i: int) -> None:
        g = self.templates.group(i, self.state[i], self.epoch[i])
        entry, addr, replicas = resp(g["master"]), resp(g["addr"]), resp(g["replicas"])
        with self._lock:
            if i < len(self._entries):
                self._entries[i], self._addr[i], self._replicas[i] = entry, addr, replicas
            else:
                self._entries.append(entry)
                self._addr.append(addr)
                self._replicas.append(replicas)

    def master_of(self, i: int) -> str:
        """The node name (`gIa` or `gIb`) this server names as group I's master."""
        return f"g{i}{'a' if self.state[i] == 'steady' else 'b'}"

    def failover(self, i: int) -> str:
        """Group I's other node becomes master at the next epoch (replies change at once);
        returns the `+switch-master` text, to be published with `publish`."""
        old = "127.0.0.2" if self.state[i] == "steady" else "127.0.0.3"
        new = "127.0.0.3" if old == "127.0.0.2" else "127.0.0.2"
        self.state[i] = "converted" if self.state[i] == "steady" else "steady"
        self.epoch[i] += 1
        self._set(i)
        port = BASE_PORT + i
        return f"g{i} {old} {port} {new} {port}"

    def publish(self, channel: str, text: str) -> None:
        """A pub/sub message on every subscribed connection (`PSUBSCRIBE *`)."""
        c, t = channel.encode(), text.encode()
        frame = (b"*4\r\n$8\r\npmessage\r\n$1\r\n*\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                 % (len(c), c, len(t), t))
        with self._lock:
            subs = list(self._subscribers)
        for conn, lock in subs:
            try:
                with lock:
                    conn.sendall(frame)
            except OSError:
                pass

    def stop(self) -> None:
        self._stop.set()
        for t in list(self._threads):
            t.join(2.0)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        # As Redis does: without it a small push (an event) can wait for the peer's delayed
        # ACK of the previous one (Nagle), ~40 ms on loopback.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        subscribed = False
        send_lock = threading.Lock()
        delayed: queue.Queue[tuple[float, bytes] | None] | None = None
        sender: threading.Thread | None = None
        if self.delay_s > 0:
            delayed = queue.Queue()
            sender = threading.Thread(target=self._send_later, args=(conn, delayed, send_lock),
                                      daemon=True)
            sender.start()
        with conn:
            while not self._stop.is_set():
                try:
                    data = conn.recv(262144)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                buf += data
                cmds, used = parse_commands(buf)
                del buf[:used]
                out: list[bytes] = []
                for args in cmds:
                    reply, now_subscribed = self._answer(args, subscribed)
                    if now_subscribed and not subscribed:
                        with self._lock:
                            self._subscribers.append((conn, send_lock))
                    subscribed = now_subscribed
                    out.append(reply)
                if not out:
                    continue
                if delayed is not None and not subscribed:
                    delayed.put((time.monotonic() + self.delay_s, b"".join(out)))
                    continue
                try:
                    with send_lock:
                        conn.sendall(b"".join(out))
                except OSError:
                    break
            if delayed is not None and sender is not None:
                delayed.put(None)
                sender.join(2.0)
            with self._lock:
                self._subscribers = [s for s in self._subscribers if s[0] is not conn]

    def _send_later(self, conn: socket.socket, q: queue.Queue[tuple[float, bytes] | None],
                    lock: threading.Lock) -> None:
        while True:
            item = q.get()
            if item is None:
                return
            due, data = item
            time.sleep(max(0.0, due - time.monotonic()))  # the simulated latency itself
            try:
                with lock:
                    conn.sendall(data)
            except OSError:
                return

    def _answer(self, args: list[str], subscribed: bool) -> tuple[bytes, bool]:
        name = args[0].upper()
        sub = args[1].upper() if len(args) > 1 else ""
        key = f"{name} {sub}".strip() if name in ("CLIENT", "SENTINEL", "INFO") else name
        with self._lock:
            self.counts[key] += 1
        if name == "CLIENT" and sub in ("SETNAME", "SETINFO"):
            return b"+OK\r\n", subscribed
        if name == "PING":
            msg = args[1] if len(args) > 1 else ""
            if subscribed:
                return resp(["pong", msg]), subscribed
            return (resp(msg) if len(args) > 1 else b"+PONG\r\n"), subscribed
        if name == "PSUBSCRIBE" and args[1:] == ["*"]:
            return b"*3\r\n$10\r\npsubscribe\r\n$1\r\n*\r\n:1\r\n", True
        if name == "INFO" and sub == "SENTINEL":
            return self._info, subscribed
        if name == "SENTINEL" and sub == "MYID":
            return self._myid, subscribed
        if name == "SENTINEL" and sub == "MASTERS":
            with self._lock:
                return b"*%d\r\n" % self.n + b"".join(self._entries), subscribed
        i = self._group(args)
        if name == "SENTINEL" and sub == "GET-MASTER-ADDR-BY-NAME" and len(args) == 3:
            return (b"*-1\r\n" if i is None else self._addr[i]), subscribed
        if name == "SENTINEL" and sub in ("MASTER", "REPLICAS", "SENTINELS") and len(args) == 3:
            if i is None:
                return b"-ERR No such master with that name\r\n", subscribed
            if sub == "MASTER":
                return self._entries[i], subscribed
            if sub == "REPLICAS":
                return self._replicas[i], subscribed
            return resp([["name", myid, "ip", host, "port", str(port), "runid", myid,
                          "flags", "sentinel"] for host, port, myid in self._peers]), subscribed
        with self._lock:
            self.unknown[" ".join(args)[:80]] += 1
        return b"-ERR replay server: unknown command\r\n", subscribed

    def _group(self, args: list[str]) -> int | None:
        if len(args) != 3 or not args[2].startswith("g") or not args[2][1:].isdigit():
            return None
        i = int(args[2][1:])
        return i if i < self.n else None


class ReplayProcess:
    """A ReplayServer in a child process of its own (fork), driven through a pipe: the
    bench's own threads (log polling) never delay its replies, and the three servers answer
    in parallel, as three Sentinels do. Same methods as ReplayServer."""

    def __init__(self, index: int, n: int, port: int, peers: list[tuple[str, int, str]],
                 delay_s: float = 0.0) -> None:
        self.host, self.port = HOSTS[index], port
        ctx = multiprocessing.get_context("fork")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve_replay, args=(child, index, n, port, peers,
                                                             delay_s), daemon=True)
        self._proc.start()
        if self._call("ready") != "ready":
            raise RuntimeError("replay server did not start")

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def _call(self, *msg: Any) -> Any:
        self._conn.send(msg)
        if not self._conn.poll(30):
            raise RuntimeError(f"replay server {self.addr}: no answer to {msg[0]}")
        return self._conn.recv()

    def failover(self, i: int) -> str:
        return str(self._call("failover", i))

    def publish(self, channel: str, text: str) -> None:
        self._call("publish", channel, text)

    def master_of(self, i: int) -> str:
        return str(self._call("master_of", i))

    @property
    def counts(self) -> Counter[str]:
        got: Counter[str] = self._call("counts")
        return got

    @property
    def unknown(self) -> Counter[str]:
        got: Counter[str] = self._call("unknown")
        return got

    def stop(self) -> None:
        if self._proc.is_alive():
            with contextlib.suppress(OSError, RuntimeError):
                self._call("stop")
            self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)


def _serve_replay(conn: Any, index: int, n: int, port: int, peers: list[tuple[str, int, str]],
                  delay_s: float) -> None:
    """The child process: one ReplayServer, and its control loop on `conn`."""
    sys.setswitchinterval(0.0005)
    server = ReplayServer(index, n, port, peers, delay_s)
    try:
        while True:
            msg = conn.recv()
            op, args = msg[0], msg[1:]
            if op == "ready":
                conn.send("ready")
            elif op == "failover":
                conn.send(server.failover(*args))
            elif op == "publish":
                server.publish(*args)
                conn.send(None)
            elif op == "master_of":
                conn.send(server.master_of(*args))
            elif op == "counts":
                conn.send(Counter(server.counts))
            elif op == "unknown":
                conn.send(Counter(server.unknown))
            elif op == "stop":
                conn.send(None)
                return
    finally:
        server.stop()


Replay = ReplayServer | ReplayProcess


def start_replay(n: int, ports: list[int], delays: tuple[float, float, float] = (0, 0, 0)
                 ) -> list[ReplayProcess]:
    """Three replay servers for N groups on HOSTS, ports given, each in its own process;
    `delays` per server."""
    ids = [Templates(i).myid for i in range(3)]
    out: list[ReplayProcess] = []
    try:
        for i in range(3):
            peers = [(HOSTS[j], ports[j], ids[j]) for j in range(3) if j != i]
            out.append(ReplayProcess(i, n, ports[i], peers, delays[i]))
    except BaseException:
        for s in out:
            s.stop()
        raise
    return out


def failover(servers: Sequence[Replay], i: int, publishers: int | None = None
             ) -> tuple[float, str]:
    """Fail group I over on every server, then publish `+switch-master` from each (from the
    first `publishers` only, when given); returns the wall-clock time of the first publish and
    the new master's node name."""
    texts = [s.failover(i) for s in servers]
    t = time.time()
    for s, text in list(zip(servers, texts, strict=True))[:publishers]:
        s.publish("+switch-master", text)
    return t, servers[0].master_of(i)
