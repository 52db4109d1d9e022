"""Drill measurement, pure: a drill's `Recording` of samples in, its numbers and timeline out.

Write outage, first write on the new master, acknowledged writes lost (read back from the
final master), read errors and outage, and the ordered timeline of Sentinel events, HAProxy
changes and the controller's commands. No I/O, no clock: unit-tested with synthetic samples.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from lab.probes import Mark, ReadSample, WriteSample, event_is_for


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
    heal_t: float | None = None  # when a fault that lasts (a network partition) was healed


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
    acked_elsewhere: int  # writes sent after the fault landed, acked by a non-final master
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
    acked = [w for w in writes if w.ok]
    return len(acked), len(lost_acks(acked, readback))


def lost_acks(
    writes: Iterable[WriteSample], readback: Mapping[str, str | None]
) -> list[WriteSample]:
    """The acked writes whose key is missing or holds another value on the final master."""
    return [w for w in writes if w.ok and readback.get(w.key) != str(w.seq)]


def routing_change(marks: Iterable[Mark], ref: str, routable: bool, after: float) -> float | None:
    """Time of the first HAProxy mark at or after `after` saying that server `ref`
    (`backend/server`) became routable (`routable`) or stopped being routable."""
    want = "UP" if routable else "DOWN"
    ts = [m.t for m in marks
          if m.kind == "haproxy" and m.source == ref and m.text == want and m.t >= after]
    return min(ts) if ts else None


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
    # From when the fault landed (its "fault" mark, stamped once the action returned), by
    # send time: a write sent between `fault_t` and the SIGKILL's delivery was the old
    # master's to acknowledge, and it was replicated (it is no lost write either).
    landed = min((m.t for m in rec.marks if m.kind == "fault" and m.t >= rec.fault_t),
                 default=rec.fault_t)
    elsewhere = sum(
        1 for w in rec.writes
        if w.ok and w.sent >= landed and w.node is not None and w.node != new
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
    ("acked_elsewhere", "writes sent after the fault, acked by a non-master"),
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
