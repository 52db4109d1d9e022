"""Failover latency seen by a client: Sentinel's promotion -> first write acknowledged by the
new master through HAProxy's write frontend, with the controller driving HAProxy.

Runs N SIGKILL failovers on a one-group LocalStack (real redis-server, redis-sentinel,
haproxy) with `python -m controller run` as a child process (lab.daemon.ControllerDaemon).
Meanwhile:
- the lab's EventRecorder (`PSUBSCRIBE *` on every Sentinel, a thread each) sees every event,
  stamped (monotonic clock) on receipt;
- a writer thread sends `SET bench:counter <i>` through the write frontend about every 1 ms;
  each connection first asks `CONFIG GET bind`, so every acknowledged write is tagged with
  the node that acknowledged it (a session through HAProxy stays on one server).
- a thread asks the replica ROLE every 1 ms on its own connection, and stamps the first
  `master` answer: the moment the new master exists.
Per failover it reports, in ms after the SIGKILL: first `+sdown`/`+odown` of the master,
the replica's first ROLE master, the leader's `+promoted-slave`, the first `+switch-master`
(any sentinel), the controller's `ready` of the new master (its log, wall clock) and the
first write acknowledged by the new master; then role->ack, promoted->ack and first
switch->ack (negative: the write landed before any `+switch-master` was published). After
each failover the old master is restarted with its original config (it comes back as a
master and Sentinel converts it ~10 s later) and the script waits for a healthy state before
the next kill.

Usage: .venv/bin/python bench/failover_latency.py [-n 10] [--down-after-ms 2000]
Prints a table, then the median and worst of each latency. Stops every process it started.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from controller.model import AdminState
from lab.daemon import ControllerDaemon, ts_of
from lab.localstack import Layout, LocalStack
from lab.probes import EventRecorder, Mark
from lab.resp import RespConn, RespError
from lab.wait import WaitTimeout, wait_until

GROUP = "redis1"


# --------------------------------------------------------------------------- sentinel events


@dataclass(frozen=True)
class Event:
    t: float  # monotonic, on receipt
    sentinel: int
    channel: str
    text: str


class SentinelEvents:
    """The lab's EventRecorder on every sentinel; its listener stamps each message again on the
    monotonic clock (the writer's clock) in the receiving thread, as it arrives."""

    def __init__(self, stack: LocalStack) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()
        self._index = {str(a): i for i, a in enumerate(stack.sentinel_addrs)}
        self.recorder = EventRecorder(stack.sentinel_addrs)
        self.recorder.listeners.append(self._on_mark)

    def _on_mark(self, mark: Mark) -> None:
        now = time.monotonic()
        with self._lock:
            self.events.append(Event(now, self._index[mark.source], mark.kind, mark.text))

    def start(self, timeout_s: float = 10.0) -> None:
        if not self.recorder.start(timeout_s):
            raise WaitTimeout(f"timed out after {timeout_s:g} s waiting for every sentinel to "
                              "confirm PSUBSCRIBE *")

    def stop(self) -> None:
        self.recorder.stop()

    def since(self, t0: float) -> list[Event]:
        with self._lock:
            return [e for e in self.events if e.t >= t0]


# --------------------------------------------------------------------------- the writer


@dataclass
class Segment:
    """One connection of the writer: which node acknowledged its writes, and when."""

    node: str
    first_ack: float | None = None
    last_ack: float | None = None
    acks: int = 0


@dataclass
class Writer:
    """`SET bench:counter i` through the write frontend about every `pause_s`."""

    stack: LocalStack
    pause_s: float = 0.001
    segments: list[Segment] = field(default_factory=list)
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def snapshot(self) -> list[Segment]:
        with self._lock:
            return [Segment(s.node, s.first_ack, s.last_ack, s.acks) for s in self.segments]

    def first_ack_by(self, node: str, after: float) -> float | None:
        for s in self.snapshot():
            if s.node == node and s.first_ack is not None and s.first_ack >= after:
                return s.first_ack
        return None

    def acks_by(self, node: str, after: float) -> int:
        """Writes acknowledged by ``node`` on connections whose first ack came after ``after``."""
        return sum(
            s.acks for s in self.snapshot()
            if s.node == node and s.first_ack is not None and s.first_ack >= after
        )

    def _run(self) -> None:
        hosts = {n.host: name for name, n in self.stack.nodes.items()}
        addr = self.stack.write_frontend(GROUP)
        i = 0
        while not self._stop.is_set():
            try:
                with RespConn(addr, 1.0) as conn:
                    bind = conn.command("CONFIG", "GET", "bind")  # ["bind", "<ip> ..."]
                    if not isinstance(bind, list) or len(bind) != 2:
                        raise ConnectionError(f"CONFIG GET bind reply {bind!r}")
                    seg = Segment(hosts.get(str(bind[1]).split()[0], "?"))
                    with self._lock:
                        self.segments.append(seg)
                    while not self._stop.is_set():
                        reply = conn.command("SET", "bench:counter", i)
                        i += 1
                        if reply != "OK":
                            raise ConnectionError(f"SET reply {reply!r}")
                        now = time.monotonic()
                        with self._lock:
                            if seg.first_ack is None:
                                seg.first_ack = now
                            seg.last_ack = now
                            seg.acks += 1
                        time.sleep(self.pause_s)  # the writer's pace (the load), not a wait
            except (OSError, RespError):  # an error reply (-READONLY...) ends it, as EOF does
                self.errors += 1
            self._stop.wait(self.pause_s)


# --------------------------------------------------------------------------- measuring


def servers(stack: LocalStack) -> dict[tuple[str, str], str]:
    """(backend, server) -> "maint" (a maintenance admin bit) or "ready" (drain included)."""
    return {
        (backend, name): "maint" if srv.admin is AdminState.MAINT else "ready"
        for backend, by_name in stack.haproxy_state().backends.items()
        for name, srv in by_name.items()
    }


def healthy(stack: LocalStack, writer: Writer, master: str, replica: str) -> bool:
    addr = stack.nodes[master].addr
    if any(stack.master_addr(i, GROUP) != addr for i in range(stack.layout.sentinels)):
        return False
    info = str(stack.redis_command(replica, "INFO", "replication"))
    if "role:slave" not in info or "master_link_status:up" not in info:
        return False
    want = {
        (f"{GROUP}_master", master): "ready", (f"{GROUP}_master", replica): "maint",
        (f"{GROUP}_replicas", master): "maint", (f"{GROUP}_replicas", replica): "ready",
    }
    have = servers(stack)
    # The shipped config's read `backup` servers: the master is the read fallback.
    fallbacks = {(f"{GROUP}_replicas", f"{master}-fallback"): "ready",
                 (f"{GROUP}_replicas", f"{replica}-fallback"): "maint"}
    want.update({k: v for k, v in fallbacks.items() if k in have})
    if have != want:
        return False
    segs = writer.snapshot()
    return bool(segs) and segs[-1].node == master and (segs[-1].last_ack or 0) > (
        time.monotonic() - 0.2
    )


@dataclass
class Row:
    killed: str
    promoted_node: str
    sdown: float | None
    odown: float | None
    promoted: float | None
    role_master: float | None  # the replica's first ROLE master answer (polled every 1 ms)
    first_switch: float | None
    ctl_ready: float | None  # from the controller's log (wall clock)
    ctl_latency_ms: float | None  # the controller's own hint->applied
    first_ack: float | None
    t_restart: float | None = None  # old master restarted (a master until converted)
    old_acks_after_restart: int | None = None  # must be 0: it is never routable for writes

    def delta(self, a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else b - a


def first(events: list[Event], channel: str, pred: Callable[[Event], bool]) -> float | None:
    return next((e.t for e in events if e.channel == channel and pred(e)), None)


def one_failover(
    stack: LocalStack, ctl: ControllerDaemon, taps: SentinelEvents, writer: Writer,
    master: str, replica: str, timeout_s: float,
) -> tuple[Row, float]:
    new = stack.nodes[replica]
    role_master: list[float] = []
    done = threading.Event()

    def watch_role() -> None:
        """ROLE of the replica every 1 ms, on one kept connection (reopened on error)."""
        conn: RespConn | None = None
        while not done.is_set():
            try:
                conn = conn or RespConn(new.addr, 0.5)
                reply = conn.command("ROLE")
                if isinstance(reply, list) and reply and reply[0] == "master":
                    role_master.append(time.monotonic())
                    break
            except (OSError, RespError):
                if conn is not None:
                    conn.close()
                conn = None
            done.wait(0.001)
        if conn is not None:
            conn.close()

    watcher = threading.Thread(target=watch_role, name="role-watch", daemon=True)
    watcher.start()
    t0 = time.monotonic()
    wall0 = time.time()
    stack.kill_node(master)
    want_tail = f"{new.host} {new.port}"
    wait_until(lambda: writer.first_ack_by(replica, t0) is not None, timeout_s,
               f"a write acknowledged by {replica}")
    wait_until(
        lambda: {e.sentinel for e in taps.since(t0)
                 if e.channel == "+switch-master" and e.text.endswith(want_tail)}
        == set(range(stack.layout.sentinels)),
        timeout_s, "+switch-master from every sentinel",
    )
    done.set()
    watcher.join(5)
    ev = taps.since(t0)
    master_txt = f"master {GROUP} "
    ctl_ready: float | None = None
    ctl_latency: float | None = None
    for line in ctl.events("server_state_changed", to="ready", backend=f"{GROUP}_master",
                           server=replica):
        ts = ts_of(line)
        if ts is not None and ts >= wall0:
            ctl_ready = t0 + (ts - wall0)
            lat = line.get("latency_ms")
            ctl_latency = float(lat) if isinstance(lat, int | float) else None
            break
    return Row(
        killed=master,
        promoted_node=replica,
        sdown=first(ev, "+sdown", lambda e: e.text.startswith(master_txt)),
        odown=first(ev, "+odown", lambda e: e.text.startswith(master_txt)),
        promoted=first(ev, "+promoted-slave", lambda e: f"{new.host} {new.port} @" in e.text),
        role_master=role_master[0] if role_master else None,
        first_switch=first(ev, "+switch-master", lambda e: e.text.endswith(want_tail)),
        ctl_ready=ctl_ready,
        ctl_latency_ms=ctl_latency,
        first_ack=writer.first_ack_by(replica, t0),
    ), t0


def ms(t0: float, t: float | None) -> str:
    return "-" if t is None else f"{(t - t0) * 1000:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("-n", type=int, default=10, help="failovers to run (10)")
    ap.add_argument("--down-after-ms", type=int, default=2000)
    ap.add_argument("--timeout-s", type=float, default=60.0, help="deadline per wait (60)")
    ap.add_argument("--workdir", type=Path, help="keep logs here (default: a temp dir, removed)")
    ap.add_argument("--controller-arg", action="append", default=[],
                    help="extra argument for `controller run` (repeat)")
    args = ap.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="failover-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    layout = Layout.for_tests(groups=(GROUP,), down_after_ms=args.down_after_ms)
    stack = LocalStack(workdir / "stack", layout)
    rows: list[tuple[Row, float]] = []
    print(f"workdir {workdir}; down-after-milliseconds {args.down_after_ms}; n={args.n}",
          flush=True)
    stack.start()
    ctl = ControllerDaemon([str(a) for a in stack.sentinel_addrs], [str(stack.haproxy_socket)],
                           workdir / "controller.log", args.controller_arg)
    ctl.start()
    taps = SentinelEvents(stack)
    writer = Writer(stack)
    rc = 0
    try:
        taps.start()
        writer.start()
        master, replica = f"{GROUP}a", f"{GROUP}b"
        for k in range(args.n + 1):
            wait_until(functools.partial(healthy, stack, writer, master, replica),
                       args.timeout_s * 2,
                       f"healthy state with master {master} (after {k} failovers)")
            if rows:  # the previous old master has been converted: did it ever ack a write?
                prev = rows[-1][0]
                assert prev.t_restart is not None
                prev.old_acks_after_restart = writer.acks_by(prev.killed, prev.t_restart)
            if k == args.n:
                break
            row, t0 = one_failover(stack, ctl, taps, writer, master, replica, args.timeout_s)
            rows.append((row, t0))
            print(f"  failover {k + 1}/{args.n}: {master} -> {replica}, promoted->ack "
                  f"{ms(row.promoted or t0, row.first_ack)} ms", flush=True)
            row.t_restart = time.monotonic()
            stack.start_node(master)  # back with its original config: a master until converted
            master, replica = replica, master
    except (WaitTimeout, TimeoutError, OSError, RespError) as e:
        print(f"stopped early: {e}", file=sys.stderr)
        rc = 1
    finally:
        writer.stop()
        taps.stop()
        ctl.stop()
        ctl_rc = ctl.proc.exited()  # also the code of a daemon that exited by itself
        stack.stop()
        problems = ctl.events("unexpected_error")
        if ctl_rc != 0 or problems:
            print(f"controller exit code {ctl_rc}, unexpected_error lines: {len(problems)}",
                  file=sys.stderr)
            rc = 1
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report(rows, writer)
    return rc


def report(rows: list[tuple[Row, float]], writer: Writer) -> None:
    if not rows:
        print("no failover measured")
        return
    print()
    print("times in ms after SIGKILL of the master (monotonic, stamped on receipt here);")
    print("ctl ready = controller's `state ready` of the new master (its log, wall clock);")
    print("ctl lat = the controller's own latency_ms (hint received -> command applied)")
    print("old acks = writes acknowledged by the restarted old master until converted (want 0)")
    print("role = the new master's first ROLE master answer (asked every 1 ms)")
    head = (f"{'#':>2} {'killed':<8}{'new':<8}{'+sdown':>8}{'+odown':>8}{'role':>8}"
            f"{'promoted':>9}{'1st sw':>8}{'ctl rdy':>8}{'ctl lat':>8}{'1st ack':>8}"
            f"{'role>ack':>9}{'prom>ack':>9}{'sw>ack':>8}{'old acks':>9}")
    print(head)
    role_ack: list[float] = []
    prom_ack: list[float] = []
    sw_ack: list[float] = []
    kill_ack: list[float] = []
    for k, (r, t0) in enumerate(rows, 1):
        pa = r.delta(r.promoted, r.first_ack)
        ra = r.delta(r.role_master, r.first_ack)
        if ra is not None:
            role_ack.append(ra * 1000)
        sa = r.delta(r.first_switch, r.first_ack)
        ka = r.delta(t0, r.first_ack)
        if pa is not None:
            prom_ack.append(pa * 1000)
        if sa is not None:
            sw_ack.append(sa * 1000)
        if ka is not None:
            kill_ack.append(ka * 1000)
        lat = "-" if r.ctl_latency_ms is None else f"{r.ctl_latency_ms:.1f}"
        print(f"{k:>2} {r.killed:<8}{r.promoted_node:<8}{ms(t0, r.sdown):>8}{ms(t0, r.odown):>8}"
              f"{ms(t0, r.role_master):>8}"
              f"{ms(t0, r.promoted):>9}{ms(t0, r.first_switch):>8}{ms(t0, r.ctl_ready):>8}"
              f"{lat:>8}{ms(t0, r.first_ack):>8}"
              f"{'-' if ra is None else f'{ra * 1000:.1f}':>9}"
              f"{'-' if pa is None else f'{pa * 1000:.1f}':>9}"
              f"{'-' if sa is None else f'{sa * 1000:.1f}':>8}"
              f"{'-' if r.old_acks_after_restart is None else r.old_acks_after_restart:>9}")
    print()
    for name, xs in (("new master answers ROLE master -> first ack by it", role_ack),
                     ("leader's +promoted-slave -> first ack by new master", prom_ack),
                     ("first +switch-master -> first ack by new master", sw_ack),
                     ("SIGKILL -> first ack by new master", kill_ack)):
        if xs:
            print(f"{name}: median {statistics.median(xs):.1f} ms, worst {max(xs):.1f} ms, "
                  f"best {min(xs):.1f} ms (n={len(xs)})")
    print(f"writer: {sum(s.acks for s in writer.segments)} acks, {len(writer.segments)} "
          f"connections, {writer.errors} errors")


if __name__ == "__main__":
    sys.exit(main())
