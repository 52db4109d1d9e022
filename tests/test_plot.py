"""Drill timeline plot: an SVG from synthetic recordings (matplotlib, no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.measure import Recording
from lab.probes import Mark, ReadSample, WriteSample

OLD, NEW = "127.0.0.2:6379", "127.0.0.3:6379"


def rec(setup: str, lost_until: float) -> Recording:
    t0 = 100.0
    ws = []
    for i in range(400):
        t = t0 - 1 + i * 0.01
        node = OLD if t < t0 + lost_until else NEW
        ok = not (t0 <= t < t0 + 0.5)
        ws.append(WriteSample(t, t, 0, i, f"k{i}", ok, node if ok else None))
    readback = {w.key: str(w.seq) for w in ws if w.node == NEW or w.t < t0}
    marks = (
        Mark(t0 + 0.4, "+promoted-slave", "s", f"slave {NEW} 127.0.0.3 6379 @ redis1 x 1"),
        Mark(t0 + 0.45, "+switch-master", "s", "redis1 127.0.0.2 6379 127.0.0.3 6379"),
        Mark(t0 + 0.46, "haproxy", "redis1_master/redis1b", "UP"),
    )
    reads = tuple(ReadSample(t0 + i * 0.05, i % 5 != 0, NEW) for i in range(40))
    return Recording(master="redis1", method="kill", fault_t=t0, old_master=OLD,
                     new_master=NEW, writes=tuple(ws), reads=reads, marks=marks,
                     readback=readback, setup=setup, end_t=t0 + 3)


def test_plot_compare_writes_an_svg_with_one_panel_per_setup(tmp_path: Path) -> None:
    """Two scenarios x two setups give an SVG naming every panel."""
    pytest.importorskip("matplotlib")
    from lab.plot import plot_compare

    out = tmp_path / "img" / "drill.svg"
    results = {sc: {"classic": rec("classic", 2.0), "controller": rec("controller", 0.5)}
               for sc in ("kill", "replica")}
    plot_compare(results, out, ("classic", "controller"))
    text = out.read_text()
    assert text.startswith("<?xml") and "<svg" in text
    for title in ("kill: classic (writes)", "kill: controller (writes)",
                  "replica: classic (reads)"):
        assert title in text
