"""Timeline plots of drills (matplotlib, optional: `pip install 'sentinel-haproxy[plot]'`).

One panel per (scenario, setup): writes per 100 ms bin, stacked: acked by the new master,
acked by another node (the old master: at risk), failed; vertical lines for the fault,
Sentinel's first `+promoted-slave` and `+switch-master`, HAProxy routing changes of the write
backend and the drill's own steps. Must not be imported by the daemon.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controller.drill import Recording, first_mark

BIN_S = 0.1


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _bins(rec: Recording, t_from: float, t_to: float) -> dict[str, list[int]]:
    n = max(1, int((t_to - t_from) / BIN_S) + 1)
    out = {"new": [0] * n, "other": [0] * n, "failed": [0] * n}
    new = rec.new_master if rec.new_master != rec.old_master else None
    for w in rec.writes:
        i = int((w.t - rec.fault_t - t_from) / BIN_S)
        if not 0 <= i < n:
            continue
        if not w.ok:
            out["failed"][i] += 1
        elif new is not None and w.node == new:
            out["new"][i] += 1
        else:
            out["other"][i] += 1
    return out


def plot_compare(results: Mapping[str, Mapping[str, Recording]], path: Path) -> None:
    """Rows = scenarios, columns = setups; written as SVG (or PNG, by suffix)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise PlotUnavailable(f"matplotlib is not installed ({e}); pip install matplotlib") from e
    scenarios = list(results)
    setups = list(next(iter(results.values())))
    fig, axes = plt.subplots(len(scenarios), len(setups), figsize=(6.5 * len(setups),
                             2.8 * len(scenarios)), squeeze=False, sharey="row")
    for r, sc in enumerate(scenarios):
        recs = results[sc]
        span = max(rec.end_t - rec.fault_t for rec in recs.values())
        t_from, t_to = -1.0, span
        for c, setup in enumerate(setups):
            _panel(axes[r][c], recs[setup], t_from, t_to, f"{sc} - {setup}")
    seen: dict[str, Any] = {}
    for row in axes:
        for ax in row:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=min(8, len(seen)),
               fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)


def _panel(ax: Any, rec: Recording, t_from: float, t_to: float, title: str) -> None:
    b = _bins(rec, t_from, t_to)
    xs = [t_from + i * BIN_S for i in range(len(b["new"]))]
    ax.bar(xs, b["new"], width=BIN_S, align="edge", color="#2a9d8f",
           label="acked by the new master")
    ax.bar(xs, b["other"], width=BIN_S, align="edge", bottom=b["new"], color="#e9a23b",
           label="acked by another node")
    bottom = [x + y for x, y in zip(b["new"], b["other"], strict=True)]
    ax.bar(xs, b["failed"], width=BIN_S, align="edge", bottom=bottom, color="#d62828",
           label="failed")
    ax.axvline(0, color="black", lw=1.2, label="fault")
    promoted = first_mark(rec.marks, "+promoted-slave", rec.master, rec.fault_t)
    if promoted:
        ax.axvline(promoted.t - rec.fault_t, color="#7b2cbf", ls="--", lw=1,
                   label="+promoted-slave")
    switch = first_mark(rec.marks, "+switch-master", rec.master, rec.fault_t)
    if switch:
        ax.axvline(switch.t - rec.fault_t, color="#1d4ed8", ls="--", lw=1,
                   label="first +switch-master")
    for m in rec.marks:
        x = m.t - rec.fault_t
        if not t_from <= x <= t_to:
            continue
        if m.kind == "haproxy" and "_master/" in m.source:
            ax.axvline(x, color="#6b7280", ls=":", lw=1, label="HAProxy write backend change")
            ax.annotate(f"{m.source.split('/')[1]} {m.text}", (x, 1), xycoords=("data",
                        "axes fraction"), fontsize=6, rotation=90, va="top", ha="right",
                        color="#374151")
        elif m.kind == "drill" and m.text.startswith(("old master", "SIGCONT", "restarted")):
            ax.axvline(x, color="#92400e", ls="-.", lw=1, label="drill step")
    ax.set_title(title, fontsize=9)
    ax.set_xlim(t_from, t_to)
    ax.set_xlabel("s since the fault", fontsize=8)
    ax.set_ylabel(f"writes / {int(BIN_S * 1000)} ms", fontsize=8)
    ax.tick_params(labelsize=7)
