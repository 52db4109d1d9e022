"""Timeline plots of drills (matplotlib, optional: `pip install 'sentinel-haproxy[plot]'`).

One panel per (scenario, setup): writes per 100 ms bin, stacked: acked and kept, acked but
lost (not on the final master), failed (or reads ok / failed); vertical lines for the fault,
Sentinel's first `+promoted-slave` and `+switch-master`, HAProxy routing changes of the write
backend and the drill's own steps. Must not be imported by the daemon.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from lab.measure import Recording, first_mark

BIN_S = 0.1
NOTE = ("Requests through HAProxy per 100 ms: 2 writers and 2 readers (one on a held connection, "
        "one reconnecting per request), each every 5 ms; white: clients waiting (1 s timeout)")


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _bins(rec: Recording, t_from: float, t_to: float, reads: bool = False) -> dict[str, list[int]]:
    """Per bin: writes acked and kept, acked then lost, failed (or reads ok / failed)."""
    n = max(1, int((t_to - t_from) / BIN_S) + 1)
    out = {"kept": [0] * n, "lost": [0] * n, "failed": [0] * n}
    samples: list[tuple[float, str]] = []
    if reads:
        samples = [(r.t, "kept" if r.ok else "failed") for r in rec.reads]
    else:
        for w in rec.writes:
            if not w.ok:
                samples.append((w.t, "failed"))
            elif rec.readback and rec.readback.get(w.key) != str(w.seq):
                samples.append((w.t, "lost"))
            else:
                samples.append((w.t, "kept"))
    for t, kind in samples:
        i = int((t - rec.fault_t - t_from) / BIN_S)
        if 0 <= i < n:
            out[kind][i] += 1
    return out


def plot_compare(
    results: Mapping[str, Mapping[str, Recording]], path: Path,
    setups: Sequence[str] | None = None, reads_for: Collection[str] = ("replica",),
    note: str = NOTE,
) -> None:
    """Rows = scenarios, columns = setups; written as SVG (or PNG, by suffix). Scenarios in
    `reads_for` show reads instead of writes."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: small, searchable
        matplotlib.rcParams["svg.hashsalt"] = "sentinel-haproxy-drill"  # stable ids
    except ImportError as e:
        raise PlotUnavailable(f"matplotlib is not installed ({e}); pip install matplotlib") from e
    scenarios = list(results)
    setups = list(setups or next(iter(results.values())))
    fig, axes = plt.subplots(len(scenarios), len(setups), figsize=(6.5 * len(setups),
                             2.8 * len(scenarios)), squeeze=False, sharey="row")
    for r, sc in enumerate(scenarios):
        recs = results[sc]
        span = max(rec.end_t - rec.fault_t for rec in recs.values())
        t_from, t_to = -1.0, span
        for c, setup in enumerate(setups):
            reads = sc in reads_for
            what = "reads" if reads else "writes"
            _panel(axes[r][c], recs[setup], t_from, t_to, f"{sc}: {setup} ({what})", reads)
    seen: dict[str, Any] = {}
    for row in axes:
        for ax in row:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=min(8, len(seen)),
               fontsize=8, frameon=False)
    fig.suptitle(note, fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)


def _panel(
    ax: Any, rec: Recording, t_from: float, t_to: float, title: str, reads: bool
) -> None:
    b = _bins(rec, t_from, t_to, reads)
    n = len(b["kept"])
    edges = [t_from + i * BIN_S for i in range(n + 1)]
    # One filled step path per series (stacked): small SVGs even for long drills.
    lost_top = [k + lo for k, lo in zip(b["kept"], b["lost"], strict=True)]
    failed_top = [x + f for x, f in zip(lost_top, b["failed"], strict=True)]
    ax.stairs(b["kept"], edges, baseline=0, fill=True, color="#2a9d8f",
              label="ok (write acked and kept / read ok)")
    ax.stairs(lost_top, edges, baseline=b["kept"], fill=True, color="#e9a23b",
              label="write acked, then lost")
    ax.stairs(failed_top, edges, baseline=lost_top, fill=True, color="#d62828",
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
        if m.kind == "haproxy" and ("_replicas/" if reads else "_master/") in m.source:
            ax.axvline(x, color="#6b7280", ls=":", lw=1, label="HAProxy backend change")
            ax.annotate(f"{m.source.split('/')[1]} {m.text}", (x, 1), xycoords=("data",
                        "axes fraction"), fontsize=6, rotation=90, va="top", ha="right",
                        color="#374151")
        elif m.kind == "drill" and m.text.startswith(("old master", "SIGCONT", "restarted")):
            ax.axvline(x, color="#92400e", ls="-.", lw=1, label="drill step")
    ax.set_title(title, fontsize=9)
    ax.set_xlim(t_from, t_to)
    ax.set_xlabel("s since the fault", fontsize=8)
    ax.set_ylabel(f"{'reads' if reads else 'writes'} / {int(BIN_S * 1000)} ms", fontsize=8)
    ax.tick_params(labelsize=7)
