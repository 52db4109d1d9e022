"""Drill measurements: pure functions over synthetic samples (no processes)."""

from __future__ import annotations

import dataclasses

import pytest

from lab.measure import (
    Recording,
    aggregate,
    first_mark,
    format_report,
    lost_writes,
    read_outage,
    summarize,
    timeline,
    write_outage,
    writer_outage,
)
from lab.probes import Mark, ReadSample, WriteSample, event_is_for

OLD, NEW = "127.0.0.2:6379", "127.0.0.3:6379"
T0 = 1_000.0  # the fault


def writes(writer: int, start: float, stop: float, ok: bool, node: str | None,
           step: float = 0.01, first_seq: int = 1) -> list[WriteSample]:
    out = []
    seq = first_seq
    t = start
    while t < stop - 1e-9:
        out.append(WriteSample(t + 0.001, t, writer, seq, f"k:{writer}:{seq}", ok, node,
                               "" if ok else "connection closed by peer"))
        seq += 1
        t = round(t + step, 6)
    return out


def kill_run(writer: int = 0, fail_until: float = T0 + 3.0) -> list[WriteSample]:
    """Ok on OLD until the fault, failures until `fail_until`, then ok on NEW for 1 s."""
    before = writes(writer, T0 - 1, T0, True, OLD)
    gap = writes(writer, T0, fail_until, False, None, first_seq=len(before) + 1)
    after = writes(writer, fail_until, fail_until + 1, True, NEW,
                   first_seq=len(before) + len(gap) + 1)
    return before + gap + after


def test_outage_runs_from_last_ok_before_the_first_failure_to_first_ok_on_new_master() -> None:
    """A writer failing from the fault to T0+3 s has a 3 s outage (to 1 ms resolution)."""
    out = writer_outage(kill_run(), T0, NEW)
    assert out == pytest.approx(3.0, abs=0.011)


def test_outage_is_the_worst_writer() -> None:
    """With two writers the reported outage is the longer one."""
    ws = kill_run(0, T0 + 1.0) + kill_run(1, T0 + 2.5)
    assert write_outage(ws, T0, NEW) == pytest.approx(2.5, abs=0.011)


def test_no_write_on_the_new_master_means_no_outage_end() -> None:
    """If no write was ever acked by the new master the outage is unknown (None)."""
    ws = writes(0, T0 - 1, T0, True, OLD) + writes(0, T0, T0 + 5, False, None, first_seq=101)
    assert writer_outage(ws, T0, NEW) is None
    assert write_outage(ws, T0, NEW) is None


def test_without_failures_the_outage_starts_at_the_last_ack_by_another_node() -> None:
    """A held connection acked by the old master until T0+2, then the new master at T0+2.5."""
    ws = writes(0, T0 - 1, T0 + 2, True, OLD) + writes(0, T0 + 2.5, T0 + 3, True, NEW,
                                                       first_seq=1000)
    assert writer_outage(ws, T0, NEW) == pytest.approx(0.5, abs=0.011)


def test_lost_writes_counts_missing_and_wrong_values_among_acked_only() -> None:
    """Acked keys absent or with another value are lost; failed writes are not checked."""
    ws = [
        WriteSample(T0, T0, 0, 1, "k:0:1", True, OLD),
        WriteSample(T0, T0, 0, 2, "k:0:2", True, OLD),
        WriteSample(T0, T0, 0, 3, "k:0:3", True, OLD),
        WriteSample(T0, T0, 0, 4, "k:0:4", False, None, "EOF"),
    ]
    readback = {"k:0:1": "1", "k:0:2": None, "k:0:3": "99"}
    assert lost_writes(ws, readback) == (3, 2)


def test_read_outage_is_the_longest_error_run_after_the_fault() -> None:
    """Errors from T0 to T0+2 and T0+3 to T0+3.5 give a 2 s outage; earlier runs do not count."""
    rs = [ReadSample(T0 - 5 + i * 0.1, i % 7 != 3, OLD) for i in range(40)]  # noise before
    rs += [ReadSample(T0 - 0.01, True, OLD)]
    rs += [ReadSample(T0 + i * 0.1, False, None) for i in range(20)]
    rs += [ReadSample(T0 + 2.0, True, OLD), ReadSample(T0 + 2.99, True, OLD)]
    rs += [ReadSample(T0 + 3 + i * 0.1, False, None) for i in range(5)]
    rs += [ReadSample(T0 + 3.5, True, OLD)]
    assert read_outage(rs, T0) == pytest.approx(2.01, abs=0.001)


def test_read_outage_without_recovery_lasts_to_the_last_sample() -> None:
    """A run of errors that never ends is measured up to the last read."""
    rs = [ReadSample(T0 - 0.1, True, OLD)] + [ReadSample(T0 + i, False, None) for i in range(4)]
    assert read_outage(rs, T0) == pytest.approx(3.1)


def test_events_are_matched_to_their_master_group() -> None:
    """Events of another group (or for a replica of another group) do not count."""
    assert event_is_for(Mark(0, "+switch-master", "s", "redis1 a 1 b 2"), "redis1")
    assert not event_is_for(Mark(0, "+switch-master", "s", "redis10 a 1 b 2"), "redis1")
    promoted = "slave 127.0.0.3:6379 127.0.0.3 6379 @ redis2 127.0.0.2 6379"
    assert event_is_for(Mark(0, "+promoted-slave", "s", promoted), "redis2")
    assert not event_is_for(Mark(0, "+promoted-slave", "s", promoted), "redis1")
    assert event_is_for(Mark(0, "+odown", "s", "master redis1 127.0.0.2 6379 #quorum 2/2"),
                        "redis1")


def recording() -> Recording:
    ws = kill_run(0, T0 + 3.0)
    late_old = [WriteSample(T0 + 3.5, T0 + 3.5, 1, 1, "k:1:1", True, OLD)]
    marks = (
        Mark(T0 + 2.9, "+promoted-slave", "127.0.0.20:26379",
             f"slave {NEW} 127.0.0.3 6379 @ redis1 127.0.0.2 6379"),
        Mark(T0 + 2.8, "+switch-master", "127.0.0.21:26379", "redis2 x 1 y 2"),
        Mark(T0 + 2.95, "+switch-master", "127.0.0.21:26379",
             "redis1 127.0.0.2 6379 127.0.0.3 6379"),
        Mark(T0 + 2.96, "controller", "controller", "set redis1_master/redis1b ready"),
    )
    readback = {w.key: str(w.seq) for w in ws if w.ok and w.t > T0}
    return Recording(master="redis1", method="kill", fault_t=T0, old_master=OLD,
                     new_master=NEW, writes=tuple(ws + late_old), marks=marks,
                     readback=readback, setup="controller")


def test_summary_times_promotion_and_switch_against_the_first_write_on_the_new_master() -> None:
    """+promoted-slave 100 ms and +switch-master 50 ms before the first new ack; others ignored."""
    r = summarize(recording())
    assert r.failed_over and r.new_master == NEW
    assert r.first_write_new_ms == pytest.approx(3001.0, abs=0.2)
    assert r.promoted_to_write_ms == pytest.approx(101.0, abs=0.2)
    assert r.switch_to_write_ms == pytest.approx(51.0, abs=0.2)
    assert r.acked_elsewhere == 1  # the late ack by the old master
    # every ack before the fault is missing from the read-back, plus the late one
    assert r.acked_lost == 100 + 1
    assert "acknowledged writes lost" in format_report(r)


def test_a_write_sent_before_the_fault_landed_is_not_counted_as_acked_by_a_non_master() -> None:
    """A write the old master acknowledges after `fault_t` but that was sent before the
    fault's action returned (its "fault" mark) is the old master's to acknowledge: not counted
    in `acked_elsewhere`; one sent after the mark is."""
    rec = recording()
    landed = T0 + 0.0004
    early = WriteSample(T0 + 0.0003, T0 + 0.0001, 0, 9_000, "k:0:9000", True, OLD)
    late = WriteSample(T0 + 0.0009, T0 + 0.0005, 0, 9_001, "k:0:9001", True, OLD)
    rec = dataclasses.replace(
        rec, writes=(*rec.writes, early, late),
        marks=(*rec.marks, Mark(landed, "fault", "drill", f"SIGKILL master {OLD}")))
    assert summarize(rec).acked_elsewhere == summarize(recording()).acked_elsewhere + 1


def test_first_mark_ignores_events_before_the_fault() -> None:
    """An event older than the fault is not the failover's."""
    marks = [Mark(T0 - 1, "+switch-master", "s", "redis1 a 1 b 2")]
    assert first_mark(marks, "+switch-master", "redis1", T0) is None


def test_timeline_is_sorted_and_names_the_first_write_on_the_new_master() -> None:
    """The timeline lists events in time order with the writer's milestones."""
    rows = timeline(recording())
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    assert any(who == "writer" and NEW in what for _, who, what in rows)
    assert not any("redis2" in what for _, _, what in rows)


def test_aggregate_gives_median_and_worst_and_never_is_worst() -> None:
    """Median and max of the repeats; a repeat that never recovered makes the worst `None`."""
    assert aggregate([3.0, 1.0, 2.0]) == (2.0, 3.0)
    assert aggregate([3.0, None, 2.0]) == (2.5, None)
    assert aggregate([None, None, 2.0]) == (None, None)
    assert aggregate([]) == (None, None)


def test_acks_that_were_lost_count_as_outage() -> None:
    """Writes acked by the old master after the fault but lost extend the reported outage."""
    ws = writes(0, T0 - 1, T0 + 2, True, OLD) + writes(0, T0 + 2.5, T0 + 3, True, NEW,
                                                       first_seq=1000)
    readback = {w.key: str(w.seq) for w in ws if w.t < T0 or w.node == NEW}
    rec = Recording(master="redis1", method="hold", fault_t=T0, old_master=OLD, new_master=NEW,
                    writes=tuple(ws), readback=readback)
    r = summarize(rec)
    assert r.acked_lost == 200
    assert r.write_outage_ms == pytest.approx(2510.0, abs=11)


def test_read_outage_is_per_reader() -> None:
    """A reader failing for 2 s is not hidden by another reader that keeps succeeding."""
    good = [ReadSample(T0 + i * 0.01, True, OLD, "", 0) for i in range(300)]
    bad = [ReadSample(T0 - 0.01, True, OLD, "", 1)]
    bad += [ReadSample(T0 + i * 0.01, False, None, "EOF", 1) for i in range(200)]
    bad += [ReadSample(T0 + 2.0, True, NEW, "", 1)]
    assert read_outage(good + bad, T0) == pytest.approx(2.01, abs=0.001)
