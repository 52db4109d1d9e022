"""`sentinel-haproxy drill`: a measured failover against any running Sentinel + HAProxy stack.

It writes through the HAProxy write frontend (SET with increasing counters, every ack stamped
with the Redis node that gave it), reads through the read frontend, subscribes to every
Sentinel, injects one fault (kill / pause / failover / hold / replica-kill), waits until writes
land on the new master, then reads every acknowledged key back from the final master.

Two halves:
- pure measurement (`summarize` and the functions it uses) over a `Recording` of samples: no
  I/O, no clock, unit-tested with synthetic samples;
- the run itself (`run_drill`) and the command line (`add_parser`, `cmd_drill`).
Must not do anything destructive without `--yes` (it then prints what it would do), and must
leave the stack as it found it except for the fault it was asked for and its own keys.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from controller.localstack import RespError
from controller.probes import (
    EventRecorder,
    HAProxyWatcher,
    HostPort,
    Mark,
    Reader,
    ReadSample,
    RespConn,
    Writer,
    WriteSample,
    current_master,
    event_is_for,
    fmt_addr,
    parse_hostport,
    read_back,
    sentinel_command,
)

METHODS = ("kill", "pause", "failover", "hold", "replica-kill")
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class DrillError(RuntimeError):
    """The drill could not run or could not finish (the message says what to check)."""


# =========================================================================== pure measurement


@dataclass(frozen=True)
class Recording:
    """Everything one drill recorded. Times are wall-clock seconds (time.time())."""

    master: str  # master group name
    method: str
    fault_t: float
    old_master: str  # "host:port" before the fault
    new_master: str | None  # "host:port" after (Sentinel majority), None if unknown
    writes: tuple[WriteSample, ...]
    reads: tuple[ReadSample, ...] = ()
    marks: tuple[Mark, ...] = ()
    readback: Mapping[str, str | None] = field(default_factory=dict)
    setup: str = ""
    target: str = ""  # the node the fault hit
    end_t: float = 0.0


@dataclass(frozen=True)
class DrillReport:
    """Numbers of one drill. Durations in ms; `None` = did not happen within the drill."""

    setup: str
    method: str
    master: str
    old_master: str
    new_master: str | None
    failed_over: bool
    writes_ok: int
    writes_failed: int
    first_write_new_ms: float | None  # fault -> first write acked by the new master
    write_outage_ms: float | None  # worst writer, surviving acks only: last ok before its gap
    #                                -> first ok on the new master
    promoted_to_write_ms: float | None  # first +promoted-slave -> first write on new master
    switch_to_write_ms: float | None  # first +switch-master -> first write on new master
    acked_checked: int
    acked_lost: int  # acknowledged writes missing or wrong on the final master
    acked_elsewhere: int  # writes acked after the fault by a node that is not the final master
    reads_ok: int
    read_errors: int
    read_outage_ms: float | None  # longest run of failed reads (last ok -> next ok)


def ms(a: float | None, b: float | None) -> float | None:
    """(b - a) in ms, rounded to 0.1; None when either is None."""
    if a is None or b is None:
        return None
    return round((b - a) * 1000, 1)


def first_mark(marks: Iterable[Mark], kind: str, master: str, after: float) -> Mark | None:
    """First `kind` Sentinel event about `master` at or after `after`."""
    found = [m for m in marks if m.kind == kind and m.t >= after and event_is_for(m, master)]
    return min(found, key=lambda m: m.t) if found else None


def first_ok_on(writes: Iterable[WriteSample], node: str | None, after: float) -> float | None:
    """Time of the first write acked by `node` at or after `after`."""
    if node is None:
        return None
    ts = [w.t for w in writes if w.ok and w.node == node and w.t >= after]
    return min(ts) if ts else None


def writer_outage(
    writes: Sequence[WriteSample], fault_t: float, new_master: str | None
) -> float | None:
    """One writer's outage in seconds: from its last ok write before its first failure after
    the fault (or, without failures, its last ok write on another node) to its first ok write
    on the new master. None when it never wrote on the new master."""
    ws = sorted(writes, key=lambda w: w.t)
    end = first_ok_on(ws, new_master, fault_t)
    if end is None:
        return None
    fails = [w for w in ws if not w.ok and fault_t <= w.t <= end]
    if fails:
        cutoff = fails[0].sent
        oks = [w.t for w in ws if w.ok and w.t <= cutoff]
        start = max(oks) if oks else cutoff
    else:
        oks = [w.t for w in ws if w.ok and w.t < end]
        start = max(oks) if oks else fault_t
    return max(0.0, end - start)


def write_outage(
    writes: Sequence[WriteSample], fault_t: float, new_master: str | None
) -> float | None:
    """Worst writer's outage (seconds); None if a writer that wrote never reached the master."""
    by_writer: dict[int, list[WriteSample]] = {}
    for w in writes:
        by_writer.setdefault(w.writer, []).append(w)
    outs = [writer_outage(ws, fault_t, new_master) for ws in by_writer.values()]
    if not outs or any(o is None for o in outs):
        return None
    return max(o for o in outs if o is not None)


def lost_writes(
    writes: Iterable[WriteSample], readback: Mapping[str, str | None]
) -> tuple[int, int]:
    """(checked, lost): acked writes whose key is missing or holds another value on the final
    master. A key not in `readback` counts as lost (it was not found)."""
    checked = lost = 0
    for w in writes:
        if not w.ok:
            continue
        checked += 1
        if readback.get(w.key) != str(w.seq):
            lost += 1
    return checked, lost


def surviving(
    writes: Sequence[WriteSample], readback: Mapping[str, str | None]
) -> list[WriteSample]:
    """The writes with every acknowledged-but-lost write turned into a failure: an ack that
    did not survive gave the client no service. Unchanged when nothing was read back."""
    if not readback:
        return list(writes)
    return [
        replace(w, ok=False, error="acked, then lost")
        if w.ok and readback.get(w.key) != str(w.seq) else w
        for w in writes
    ]


def read_outage(reads: Sequence[ReadSample], after: float) -> float | None:
    """Longest span (seconds), over readers, from the last ok read before a run of errors to
    the next ok read, for runs that start at or after `after`; an unfinished run ends at the
    reader's last sample."""
    by_reader: dict[int, list[ReadSample]] = {}
    for r in reads:
        by_reader.setdefault(r.reader, []).append(r)
    outs = [o for rs in by_reader.values() if (o := _reader_outage(rs, after)) is not None]
    return max(outs) if outs else None


def _reader_outage(reads: Sequence[ReadSample], after: float) -> float | None:
    rs = sorted(reads, key=lambda r: r.t)
    worst: float | None = None
    last_ok: float | None = None
    run_start: float | None = None
    for r in rs:
        if r.ok:
            if run_start is not None:
                span = r.t - run_start
                worst = span if worst is None else max(worst, span)
                run_start = None
            last_ok = r.t
        elif run_start is None and r.t >= after:
            run_start = last_ok if last_ok is not None and last_ok >= after - 1.0 else r.t
    if run_start is not None and rs:
        span = rs[-1].t - run_start
        worst = span if worst is None else max(worst, span)
    return worst


def summarize(rec: Recording) -> DrillReport:
    """The drill's numbers from its recording (pure)."""
    new = rec.new_master
    failed_over = new is not None and new != rec.old_master
    target = new if failed_over else rec.old_master
    first_new = first_ok_on(rec.writes, target, rec.fault_t)
    promoted = first_mark(rec.marks, "+promoted-slave", rec.master, rec.fault_t)
    switch = first_mark(rec.marks, "+switch-master", rec.master, rec.fault_t)
    checked, lost = lost_writes(rec.writes, rec.readback)
    elsewhere = sum(
        1 for w in rec.writes
        if w.ok and w.t >= rec.fault_t and w.node is not None and w.node != new
    )
    outage = write_outage(surviving(rec.writes, rec.readback), rec.fault_t, target)
    reads_after = [r for r in rec.reads if r.t >= rec.fault_t]
    r_out = read_outage(rec.reads, rec.fault_t)
    return DrillReport(
        setup=rec.setup,
        method=rec.method,
        master=rec.master,
        old_master=rec.old_master,
        new_master=new,
        failed_over=failed_over,
        writes_ok=sum(1 for w in rec.writes if w.ok),
        writes_failed=sum(1 for w in rec.writes if not w.ok),
        first_write_new_ms=ms(rec.fault_t, first_new) if failed_over else None,
        write_outage_ms=None if outage is None else round(outage * 1000, 1),
        promoted_to_write_ms=ms(promoted.t if promoted else None, first_new),
        switch_to_write_ms=ms(switch.t if switch else None, first_new),
        acked_checked=checked,
        acked_lost=lost,
        acked_elsewhere=elsewhere,
        reads_ok=sum(1 for r in rec.reads if r.ok),
        read_errors=sum(1 for r in reads_after if not r.ok),
        read_outage_ms=None if r_out is None else round(r_out * 1000, 1),
    )


#: Metrics shown in tables, with their labels; all are "bigger is worse".
METRICS: tuple[tuple[str, str], ...] = (
    ("write_outage_ms", "write outage, worst writer (surviving acks), ms"),
    ("first_write_new_ms", "fault -> first write on new master, ms"),
    ("promoted_to_write_ms", "+promoted-slave -> first write on new master, ms"),
    ("switch_to_write_ms", "first +switch-master -> first write on new master, ms"),
    ("acked_lost", "acknowledged writes lost"),
    ("acked_elsewhere", "writes acked by a non-master after the fault"),
    ("writes_failed", "write errors"),
    ("read_errors", "read errors"),
    ("read_outage_ms", "read outage, worst reader (longest), ms"),
)


def aggregate(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """(median, worst) of one metric over repeats; a None (never happened) is the worst."""
    if not values:
        return None, None
    if any(v is None for v in values):
        present = [v for v in values if v is not None]
        med = statistics.median(present) if len(present) * 2 > len(values) else None
        return med, None
    nums = [v for v in values if v is not None]
    return statistics.median(nums), max(nums)


def fmt_num(v: float | None, never: str = "never") -> str:
    if v is None:
        return never
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"


def format_report(r: DrillReport) -> str:
    head = f"drill {r.master} ({r.method})"
    if r.setup:
        head += f" [{r.setup}]"
    if r.failed_over:
        head += f": master {r.old_master} -> {r.new_master}"
    else:
        head += f": master stayed {r.old_master}"
    lines = [head]
    for key, label in METRICS:
        v = getattr(r, key)
        extra = ""
        if key == "acked_lost":
            extra = f" of {r.acked_checked} acked"
        lines.append(f"  {label:<56}{fmt_num(v, 'n/a'):>10}{extra}")
    lines.append(f"  {'writes ok':<56}{r.writes_ok:>10}")
    lines.append(f"  {'reads ok':<56}{r.reads_ok:>10}")
    return "\n".join(lines)


def timeline(rec: Recording, master: str | None = None) -> list[tuple[float, str, str]]:
    """(ms since the fault, who, what) for the marks about `master`, plus write milestones."""
    name = master or rec.master
    out: list[tuple[float, str, str]] = []
    for m in rec.marks:
        if m.kind in ("haproxy", "controller", "fault", "drill"):
            out.append(((m.t - rec.fault_t) * 1000, m.kind if m.kind != "fault" else "drill",
                        f"{m.source} {m.text}".strip() if m.kind == "haproxy" else m.text))
        elif event_is_for(m, name):
            out.append(((m.t - rec.fault_t) * 1000, f"sentinel {m.source.split(':')[0]}",
                        f"{m.kind} {m.text}"))
    fails = [w for w in rec.writes if not w.ok and w.t >= rec.fault_t]
    if fails:
        f = min(fails, key=lambda w: w.t)
        out.append(((f.t - rec.fault_t) * 1000, "writer", f"first failed write ({f.error})"))
    new = rec.new_master if rec.new_master != rec.old_master else None
    t_new = first_ok_on(rec.writes, new, rec.fault_t)
    if t_new is not None:
        out.append(((t_new - rec.fault_t) * 1000, "writer", f"first write acked by {new}"))
    return sorted(out, key=lambda x: x[0])


def format_timeline(rows: Sequence[tuple[float, str, str]]) -> str:
    return "\n".join(f"  {t:+10.1f} ms  {who:<22} {what}" for t, who, what in rows)


# =========================================================================== running a drill


class Actions(Protocol):
    """How to hurt a node; a local stack does it by its own PIDs, others by given PIDs."""

    def kill(self, addr: str) -> None: ...
    def pause(self, addr: str) -> None: ...
    def resume(self, addr: str) -> None: ...
    def restart(self, addr: str) -> bool: ...  # False: cannot (do it yourself)
    def describe(self, verb: str, addr: str) -> str: ...


def _is_loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("::1", "localhost")


class PidActions:
    """Signals Redis processes by PID: from `--pid-of ADDR=PID`, else, for a node on this
    machine's loopback, from its own `INFO server` process_id."""

    def __init__(self, pid_of: Mapping[str, int]) -> None:
        self.pid_of = dict(pid_of)

    def pid(self, addr: str) -> int:
        if addr in self.pid_of:
            return self.pid_of[addr]
        host, port = parse_hostport(addr)
        if not _is_loopback(host):
            raise DrillError(
                f"{addr} is not on this machine's loopback: give its PID with --pid-of {addr}=PID "
                "(or use --method failover)"
            )
        try:
            with RespConn((host, port), 1.0) as c:
                info = c.command("INFO", "server")
        except (OSError, ConnectionError, RespError) as e:
            raise DrillError(f"cannot ask {addr} for its process id: {e}") from None
        for line in str(info).splitlines():
            if line.startswith("process_id:"):
                pid = int(line.split(":", 1)[1])
                self.pid_of[addr] = pid
                return pid
        raise DrillError(f"{addr}: no process_id in INFO server; use --pid-of")

    def kill(self, addr: str) -> None:
        os.kill(self.pid(addr), signal.SIGKILL)

    def pause(self, addr: str) -> None:
        os.kill(self.pid(addr), signal.SIGSTOP)

    def resume(self, addr: str) -> None:
        os.kill(self.pid(addr), signal.SIGCONT)

    def restart(self, addr: str) -> bool:
        return False

    def describe(self, verb: str, addr: str) -> str:
        try:
            pid: int | str = self.pid(addr)
        except DrillError as e:
            pid = f"? ({e})"
        return f"{verb} redis process {pid} ({addr})"


@dataclass
class DrillSpec:
    sentinels: list[HostPort]
    write: HostPort
    master: str
    method: str = "kill"
    read: HostPort | None = None
    pause_s: float = 5.0  # pause: SIGSTOP length; replica-kill: down time before restart
    duration_s: float = 30.0  # bound on waiting for writes on the new master
    warmup_s: float = 1.0
    settle_s: float = 1.0
    interval_s: float = 0.002
    write_timeout_s: float = 1.0
    writers: int = 2  # writer 0 persistent, writer 1 reconnects per write, ...
    readers: int = 2  # same pattern
    haproxy_socket: str | None = None
    backends: tuple[str, ...] = ()
    setup: str = ""
    prefix: str = ""


@dataclass
class DrillRun:
    """Live state of a running drill, handed to the `after` hook."""

    spec: DrillSpec
    recorder: EventRecorder
    old_master: str
    fault_t: float = 0.0
    new_master: str | None = None
    extra_marks: list[Mark] = field(default_factory=list)

    def mark(self, kind: str, text: str) -> None:
        self.extra_marks.append(Mark(time.time(), kind, "drill", text))

    def wait_event(self, kind: str, predicate: Callable[[Mark], bool], timeout_s: float,
                   after: float) -> Mark | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for m in self.recorder.snapshot():
                if m.kind == kind and m.t >= after and predicate(m):
                    return m
            time.sleep(0.02)
        return None


def _sentinel_failover(spec: DrillSpec) -> None:
    errors = []
    for s in spec.sentinels:
        try:
            if sentinel_command(s, "SENTINEL", "FAILOVER", spec.master) == "OK":
                return
        except (OSError, ConnectionError, RespError) as e:
            errors.append(f"{fmt_addr(s)}: {e}")
    raise DrillError("no sentinel accepted SENTINEL FAILOVER: " + "; ".join(errors))


def pick_replica(spec: DrillSpec, master: str) -> str:
    """A replica of `master` that a Sentinel sees up."""
    for s in spec.sentinels:
        try:
            reply = sentinel_command(s, "SENTINEL", "REPLICAS", spec.master)
        except (OSError, ConnectionError, RespError):
            continue
        if not isinstance(reply, list):
            continue
        for entry in reply:
            if not isinstance(entry, list):
                continue
            d = {str(k): str(v) for k, v in zip(entry[::2], entry[1::2], strict=False)}
            if "s_down" not in d.get("flags", "") and "disconnected" not in d.get("flags", ""):
                return f"{d.get('ip')}:{d.get('port')}"
    raise DrillError(f"no healthy replica of {spec.master} ({master}) known to the sentinels")


def replicas_of(spec: DrillSpec) -> list[str]:
    """Replica addresses the Sentinels list for the group (up or not)."""
    out: list[str] = []
    for s in spec.sentinels:
        try:
            reply = sentinel_command(s, "SENTINEL", "REPLICAS", spec.master)
        except (OSError, ConnectionError, RespError):
            continue
        for entry in reply if isinstance(reply, list) else []:
            if isinstance(entry, list):
                d = {str(k): str(v) for k, v in zip(entry[::2], entry[1::2], strict=False)}
                addr = f"{d.get('ip')}:{d.get('port')}"
                if addr not in out:
                    out.append(addr)
    return out


def replica_in_sync(addr: str, master: str) -> bool:
    """The node at `addr` says it replicates from `master` with its link up, no sync running."""
    try:
        with RespConn(parse_hostport(addr), 1.0) as c:
            info = str(c.command("INFO", "replication"))
    except (OSError, ConnectionError, RespError, ValueError):
        return False
    fields = dict(ln.split(":", 1) for ln in info.splitlines() if ":" in ln)
    return (
        fields.get("role") == "slave"
        and f"{fields.get('master_host')}:{fields.get('master_port')}" == master
        and fields.get("master_link_status") == "up"
        and fields.get("master_sync_in_progress") == "0"
    )


def wait_replica_in_sync(spec: DrillSpec, master: str, timeout_s: float = 30.0) -> str:
    """A replica of `master` in sync (bounded wait): a failover drill only makes sense from a
    healthy group; right after another failover the old master may still be syncing."""
    deadline = time.monotonic() + timeout_s
    while True:
        for addr in replicas_of(spec):
            if addr != master and replica_in_sync(addr, master):
                return addr
        if time.monotonic() >= deadline:
            raise DrillError(f"no replica of {spec.master} ({master}) in sync within "
                             f"{timeout_s:.0f} s: a failover now would fail or lose data")
        time.sleep(0.1)


def plan_text(spec: DrillSpec, actions: Actions, old: str) -> list[str]:
    """What the drill would do, step by step (shown without --yes)."""
    steps = [
        f"write SET {spec.prefix or 'drill:<id>'}:<writer>:<n> through {fmt_addr(spec.write)} "
        f"with {spec.writers} writer(s), every {spec.interval_s * 1000:.0f} ms",
    ]
    if spec.read:
        steps.append(f"read GET through {fmt_addr(spec.read)}")
    steps.append(f"subscribe to {', '.join(fmt_addr(s) for s in spec.sentinels)}")
    if spec.method == "kill":
        steps.append(actions.describe("SIGKILL", old) + f": the master of {spec.master}")
    elif spec.method == "pause":
        steps.append(actions.describe("SIGSTOP", old) + f" for {spec.pause_s} s, then SIGCONT")
    elif spec.method == "hold":
        steps.append(actions.describe("SIGSTOP", old) + f", SENTINEL FAILOVER {spec.master}, "
                     "SIGCONT after the first +switch-master")
    elif spec.method == "failover":
        steps.append(f"SENTINEL FAILOVER {spec.master} on the first sentinel that accepts")
    else:
        steps.append(f"SIGKILL a replica of {spec.master} (restart it yourself afterwards)")
    steps.append(f"wait up to {spec.duration_s} s for writes on the new master, then read back "
                 "every acknowledged key from it")
    return steps


def run_drill(
    spec: DrillSpec,
    actions: Actions,
    after: Callable[[DrillRun], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Recording:
    """Run one drill and return what it recorded (see the module doc)."""
    say = progress or (lambda _msg: None)
    prefix = spec.prefix or f"drill:{uuid.uuid4().hex[:8]}"
    old = current_master(spec.sentinels, spec.master)
    if old is None:
        raise DrillError(f"no majority of {len(spec.sentinels)} sentinel(s) names a master for "
                         f"{spec.master!r}")
    if spec.method != "replica-kill":
        wait_replica_in_sync(spec, old)
    recorder = EventRecorder(spec.sentinels)
    if not recorder.start():
        recorder.stop()
        raise DrillError("could not subscribe to every sentinel within 5 s")
    run = DrillRun(spec, recorder, old)
    watcher = None
    if spec.haproxy_socket:
        watcher = HAProxyWatcher(spec.haproxy_socket, spec.backends)
        watcher.start()
    stop = threading.Event()
    writers = [
        Writer(spec.write, prefix, i, stop, spec.interval_s, spec.write_timeout_s,
               reconnect_each=i % 2 == 1)
        for i in range(spec.writers)
    ]
    readers = [
        Reader(spec.read, f"{prefix}:probe", stop, reconnect_each=i % 2 == 1, reader_id=i)
        for i in range(spec.readers)
    ] if spec.read else []
    threads: list[threading.Thread] = [*writers, *readers]
    for t in threads:
        t.start()
    paused: str | None = None
    target = old
    try:
        def acked_by_old() -> bool:
            return any(w.ok and w.node == old for wr in writers for w in wr.samples[-50:])

        if not _wait(acked_by_old, 5.0):
            raise DrillError(f"writes through {fmt_addr(spec.write)} are not acked by the master "
                             f"{old} before the fault: is HAProxy routing to it?")
        time.sleep(spec.warmup_s)
        if spec.method == "replica-kill":
            target = pick_replica(spec, old)
        run.fault_t = time.time()
        say(f"fault: {spec.method} {target}")
        if spec.method == "kill":
            actions.kill(target)
            run.mark("fault", f"SIGKILL master {target}")
        elif spec.method in ("pause", "hold"):
            actions.pause(target)
            paused = target
            run.mark("fault", f"SIGSTOP master {target}")
            if spec.method == "hold":
                _sentinel_failover(spec)
                run.mark("drill", f"SENTINEL FAILOVER {spec.master}")
        elif spec.method == "failover":
            _sentinel_failover(spec)
            run.mark("fault", f"SENTINEL FAILOVER {spec.master}")
        elif spec.method == "replica-kill":
            actions.kill(target)
            run.mark("fault", f"SIGKILL replica {target}")
        else:
            raise DrillError(f"unknown method {spec.method!r}")
        if spec.method == "replica-kill":
            _replica_phase(spec, actions, run, readers, target, say)
        else:
            paused = _failover_phase(spec, actions, run, writers, paused, say)
        if after is not None:
            after(run)
        time.sleep(spec.settle_s)
    finally:
        stop.set()
        if paused is not None:
            actions.resume(paused)
        for t in threads:
            t.join(max(5.0, spec.write_timeout_s + 1))
        recorder.stop()
        if watcher is not None:
            watcher.stop()
    end_t = time.time()
    final = current_master(spec.sentinels, spec.master)
    writes = tuple(sorted((w for wr in writers for w in wr.samples), key=lambda w: w.t))
    readback: dict[str, str | None] = {}
    if final is not None:
        keys = [w.key for w in writes if w.ok]
        try:
            readback = read_back(parse_hostport(final), keys)
        except (OSError, ConnectionError, RespError) as e:
            raise DrillError(f"cannot read the acknowledged keys back from {final}: {e}") from None
    marks = [*recorder.snapshot(), *run.extra_marks, *(watcher.marks if watcher else [])]
    return Recording(
        master=spec.master, method=spec.method, fault_t=run.fault_t, old_master=old,
        new_master=final, writes=writes,
        reads=tuple(sorted((r for rd in readers for r in rd.samples), key=lambda r: r.t)),
        marks=tuple(sorted(marks, key=lambda m: m.t)), readback=readback, setup=spec.setup,
        target=target, end_t=end_t,
    )


def _wait(cond: Callable[[], bool], timeout_s: float, step_s: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step_s)
    return cond()


def _failover_phase(
    spec: DrillSpec, actions: Actions, run: DrillRun, writers: Sequence[Writer],
    paused: str | None, say: Callable[[str], None],
) -> str | None:
    """Wait (bounded) until a write is acked by a new master and a paused node is resumed
    (on time: after `pause_s`, or for `hold` after the first +switch-master)."""
    deadline = time.monotonic() + spec.duration_s
    next_poll = 0.0
    seen = dict.fromkeys(range(len(writers)), 0)
    acked_new = False
    while time.monotonic() < deadline:
        now = time.time()
        if paused is not None:
            resume = False
            if spec.method == "pause" and now >= run.fault_t + spec.pause_s:
                resume = True
            if spec.method == "hold" and first_mark(run.recorder.snapshot(), "+switch-master",
                                                    spec.master, run.fault_t):
                resume = True
            if resume:
                actions.resume(paused)
                run.mark("drill", f"SIGCONT {paused}")
                say(f"resumed {paused}")
                paused = None
        if time.monotonic() >= next_poll:
            next_poll = time.monotonic() + 0.05
            m = current_master(spec.sentinels, spec.master)
            if m is not None and m != run.old_master:
                run.new_master = m
        if run.new_master is not None and not acked_new:
            for i, wr in enumerate(writers):
                samples = wr.samples[seen[i]:]
                seen[i] += len(samples)
                if any(w.ok and w.node == run.new_master for w in samples):
                    say(f"writes acked by the new master {run.new_master}")
                    acked_new = True
                    break
        if acked_new and paused is None:
            return None
        time.sleep(0.01)
    say(f"no write acked by a new master within {spec.duration_s} s")
    return paused


def _replica_phase(
    spec: DrillSpec, actions: Actions, run: DrillRun, readers: Sequence[Reader], target: str,
    say: Callable[[str], None],
) -> None:
    time.sleep(spec.pause_s)
    if not actions.restart(target):
        say(f"{target} stays down: restart it yourself")
        return
    run.mark("drill", f"restarted replica {target}")
    say(f"restarted {target}")
    t0 = time.time()
    deadline = time.monotonic() + spec.duration_s
    while readers and time.monotonic() < deadline:
        if all(any(r.ok and r.t > t0 for r in rd.samples[-20:]) for rd in readers):
            return
        time.sleep(0.02)


# =========================================================================== command line


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "drill",
        help="measured failover against a running stack (writes, reads, events, lost writes)",
        description="Write and read through HAProxy while a failover happens; report the write "
        "outage, the time from Sentinel's promotion to the first write on the new master, "
        "acknowledged writes lost and read errors. Destructive steps need --yes.",
    )
    p.add_argument("--sentinel", dest="tool_sentinels", action="append", metavar="HOST:PORT",
                   help="a Sentinel; repeat or comma-separate")
    p.add_argument("--write", dest="tool_write", metavar="HOST:PORT",
                   help="HAProxy write frontend")
    p.add_argument("--read", dest="tool_read", metavar="HOST:PORT", help="HAProxy read frontend")
    p.add_argument("--master", dest="tool_master", metavar="NAME", default="redis1")
    p.add_argument("--method", dest="tool_method", choices=METHODS, default="kill",
                   help="kill: SIGKILL the master; pause: SIGSTOP it for --pause-s; failover: "
                   "SENTINEL FAILOVER (works on any stack); hold: SIGSTOP + SENTINEL FAILOVER + "
                   "SIGCONT; replica-kill: SIGKILL a replica")
    p.add_argument("--pause-s", dest="tool_pause_s", type=float, metavar="S", default=5.0)
    p.add_argument("--pid-of", dest="tool_pid_of", action="append", default=[],
                   metavar="HOST:PORT=PID", help="PID of a Redis node (else INFO process_id "
                   "when the node is on loopback)")
    p.add_argument("--duration-s", dest="tool_duration_s", type=float, metavar="S", default=30.0,
                   help="longest wait for writes on the new master (30)")
    p.add_argument("--haproxy-socket", dest="tool_haproxy_socket", metavar="PATH",
                   help="also record HAProxy server changes from this admin socket")
    p.add_argument("--writers", dest="tool_writers", type=int, metavar="N", default=2)
    p.add_argument("--json", dest="tool_json", action="store_true")
    p.add_argument("--yes", dest="tool_yes", action="store_true",
                   help="really do it (without: print what would be done)")
    p.add_argument("--compare", dest="tool_compare", action="store_true",
                   help="start two local stacks (classic HAProxy vs controller) and run the "
                   "scenarios on both side by side")
    p.add_argument("--repeat", dest="tool_repeat", type=int, metavar="N", default=1,
                   help="--compare: repetitions (median and worst)")
    p.add_argument("--scenario", dest="tool_scenarios", action="append", metavar="NAME",
                   help="--compare: kill, return, hold, replica (repeatable; default all)")
    p.add_argument("--plot", dest="tool_plot", metavar="FILE.svg", action="append",
                   help="--compare: write a timeline plot, SVG or PNG by suffix (repeatable; "
                   "needs matplotlib: pip install 'sentinel-haproxy[plot]')")
    p.add_argument("--workdir", dest="tool_workdir", metavar="DIR",
                   help="--compare: where the stacks run (default a temp dir)")
    p.add_argument("--controller-arg", dest="tool_controller_args", action="append",
                   default=[], metavar="ARG",
                   help="--compare: extra argument for the controller daemon, e.g. "
                   "--controller-arg=--read-fallback-to-master (repeatable)")
    p.set_defaults(func=cmd_drill)


def _split(values: Sequence[str] | None) -> list[str]:
    return [x.strip() for v in values or [] for x in v.split(",") if x.strip()]


def cmd_drill(args: argparse.Namespace) -> int:
    if args.tool_compare:
        from controller.compare import cmd_compare

        return cmd_compare(args)
    try:
        sentinels = [parse_hostport(s) for s in _split(args.tool_sentinels)]
        if not sentinels or not args.tool_write:
            raise ValueError("give at least one --sentinel HOST:PORT and --write HOST:PORT "
                             "(or --compare)")
        pid_of: dict[str, int] = {}
        for item in args.tool_pid_of:
            addr, _, pid = item.rpartition("=")
            parse_hostport(addr)
            if not pid.isdigit():
                raise ValueError(f"--pid-of {item!r}: expected HOST:PORT=PID")
            pid_of[addr] = int(pid)
        spec = DrillSpec(
            sentinels=sentinels, write=parse_hostport(args.tool_write), master=args.tool_master,
            method=args.tool_method,
            read=parse_hostport(args.tool_read) if args.tool_read else None,
            pause_s=args.tool_pause_s, duration_s=args.tool_duration_s,
            writers=max(1, args.tool_writers), haproxy_socket=args.tool_haproxy_socket,
            backends=(f"{args.tool_master}_master", f"{args.tool_master}_replicas"),
        )
        if spec.method == "hold":
            spec.write_timeout_s = 15.0
    except ValueError as e:
        print(f"sentinel-haproxy drill: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    actions = PidActions(pid_of)
    if not args.tool_yes:
        old = current_master(spec.sentinels, spec.master) or "<unknown master>"
        print("drill would (add --yes to do it):")
        for step in plan_text(spec, actions, old):
            print(f"  - {step}")
        return EXIT_USAGE
    progress = None if args.tool_json else (lambda m: print(f"  .. {m}", flush=True))
    try:
        rec = run_drill(spec, actions, progress=progress)
    except DrillError as e:
        print(f"sentinel-haproxy drill: {e}", file=sys.stderr)
        return EXIT_FAILED
    report = summarize(rec)
    if args.tool_json:
        json.dump({"report": asdict(report), "timeline": [
            {"ms": round(t, 1), "who": who, "what": what} for t, who, what in timeline(rec)
        ]}, sys.stdout, indent=2)
        print()
    else:
        print(format_report(report))
        print("timeline (ms since the fault):")
        print(format_timeline(timeline(rec)))
    return EXIT_OK if report.failed_over or spec.method == "replica-kill" else EXIT_FAILED
