"""The one-read gap of quiet faults, read by read: classic recipe vs controller (vs redis-ha).

In a master SIGKILL (the double fault `leader`, the held connection `hold` too) every setup
loses the same read or two: Sentinel itself closes the client connections of the replica it
promotes or reconfigures (`CLIENT KILL` in the MULTI that sends `SLAVEOF`). `drill --compare`
reports that as a read outage of ~10 ms (last ok read -> next ok read: two 5 ms reader
intervals), and the setups' medians then differ by fractions of a millisecond. This bench
looks at each failed read: when it failed, how long it was out (`err_ms`, sent -> error), how
long the reader then waited for its next interval (`wait_ms`, the probe's, not the setup's),
and how long the next read took through HAProxy (`next_ms`, sent -> ok: the reconnect, the
only part a setup controls), with the latency of every ok read in the 5 s after the fault for
scale, and the wall-clock times of the error and of the next read (to line up with the
daemon's log, `--workdir`). Same stacks, clients and faults as `drill --compare`
(lab.compare), all setups at once, `--runs` times.

    .venv/bin/python bench/read_gap.py --runs 6 [--replicas 2] [--scenario leader|hold]
        [--setup classic --setup controller] [--controller-arg=--no-early-promotion]
        [--freeze-controller] [--workdir DIR]

`--freeze-controller` SIGSTOPs the daemon through each fault (HAProxy keeps the state it had):
what the shipped HAProxy config alone does with the reads, apart from the daemon's activity.

Prints one line per failed read and a summary per setup (medians over runs).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import signal
import statistics
import tempfile
from pathlib import Path
from typing import Any

from lab.compare import SETUPS, Setup, all_at_once, restore, run_scenario, started
from lab.measure import Recording
from lab.probes import ReadSample


def failed_reads(rec: Recording) -> list[dict[str, Any]]:
    """Each failed read at or after the fault, with the ok read before it and after it (and
    the nodes that answered them: `node` is where the reader's connection was)."""
    out: list[dict[str, Any]] = []
    for reader in sorted({r.reader for r in rec.reads}):
        rs = sorted((r for r in rec.reads if r.reader == reader and r.t >= rec.fault_t - 1.0),
                    key=lambda r: r.t)
        for j, r in enumerate(rs):
            if r.ok or r.t < rec.fault_t:
                continue
            prev = next((x for x in reversed(rs[:j]) if x.ok), None)
            nxt = next((x for x in rs[j + 1:] if x.ok), None)
            if prev is None or nxt is None:
                continue
            out.append({"reader": reader, "at_ms": (r.t - rec.fault_t) * 1000,
                        "err_ms": (r.t - r.sent) * 1000, "wait_ms": (nxt.sent - r.t) * 1000,
                        "next_ms": (nxt.t - nxt.sent) * 1000, "gap_ms": (nxt.t - prev.t) * 1000,
                        "error_t": r.t, "next_sent_t": nxt.sent,
                        "prev_node": prev.node or "?", "next_node": nxt.node or "?"})
    return out


def ok_latencies(reads: list[ReadSample], since: float, window_s: float = 5.0) -> list[float]:
    return [(r.t - r.sent) * 1000 for r in reads if r.ok and since <= r.t <= since + window_s]


def stamp(t: float) -> str:
    """Wall-clock time as the daemon's log lines have it (UTC ISO), to the microsecond."""
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%H:%M:%S.%f")


def med(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "-"


def frozen_run(setup: Setup, scenario: str) -> Recording:
    """`run_scenario`, with the controller daemon (if any) stopped by SIGSTOP throughout."""
    pid = setup.ctl.pid if setup.ctl is not None else None
    if pid is not None:
        os.kill(pid, signal.SIGSTOP)
    try:
        return run_scenario(setup, scenario)
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGCONT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--replicas", type=int, default=1, help="replicas per group (2: 3-node)")
    ap.add_argument("--scenario", choices=("kill", "leader", "hold"), default="kill")
    ap.add_argument("--setup", dest="setups", action="append", choices=SETUPS,
                    help="default: all three")
    ap.add_argument("--controller-arg", dest="controller_args", action="append", default=[],
                    help="one more argument for the controller daemon (repeatable)")
    ap.add_argument("--freeze-controller", action="store_true",
                    help="SIGSTOP the controller daemon through each fault (HAProxy keeps the "
                    "state it had: what the shipped config alone does with the reads)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the stacks' logs here (default: a temp dir, removed)")
    args = ap.parse_args()
    setups = tuple(args.setups or SETUPS)
    per: dict[str, list[dict[str, Any]]] = {s: [] for s in setups}
    errors: dict[str, list[int]] = {s: [] for s in setups}
    gaps: dict[str, list[float]] = {s: [] for s in setups}
    lat: dict[str, list[float]] = {s: [] for s in setups}
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="read-gap-")))
        else:
            tmp = args.workdir
            tmp.mkdir(parents=True, exist_ok=True)
        running = stack.enter_context(started(tmp, setups, args.replicas,
                                                     args.controller_args))
        for i in range(args.runs):
            recs = all_at_once(running, args.scenario,
                               frozen_run if args.freeze_controller else run_scenario)
            for name, rec in recs.items():
                fails = failed_reads(rec)
                errors[name].append(sum(1 for r in rec.reads if not r.ok and r.t >= rec.fault_t))
                if fails:  # a run without a failed read has no gap
                    gaps[name].append(max(f["gap_ms"] for f in fails))
                lat[name] += ok_latencies(list(rec.reads), rec.fault_t)
                for f in fails:
                    per[name].append(f)
                    print(f"run {i + 1} {name:<10} reader {f['reader']:.0f}: failed "
                          f"{f['at_ms']:.0f} ms after the fault, out {f['err_ms']:.2f} ms, "
                          f"reader waited {f['wait_ms']:.2f}, next read {f['next_ms']:.2f} ms, "
                          f"gap {f['gap_ms']:.2f} ms, {f['prev_node']} -> {f['next_node']} "
                          f"(error at {stamp(f['error_t'])}, "
                          f"next read sent at {stamp(f['next_sent_t'])})", flush=True)
            for s in running:
                restore(s)
    print(f"\n{args.scenario}, {args.replicas + 1}-node groups, {args.runs} runs; medians in ms")
    print(f"{'setup':<12}{'read errors/run':>16}{'errors total':>14}{'gap':>8}"
          f"{'next read':>11}{'ok read p50':>13}{'ok p99':>8}")
    for s in setups:
        p99 = statistics.quantiles(lat[s], n=100)[-1] if len(lat[s]) > 1 else float("nan")
        print(f"{s:<12}{statistics.median(errors[s]):>16.1f}{sum(errors[s]):>14}"
              f"{med(gaps[s]):>8}{med([f['next_ms'] for f in per[s]]):>11}"
              f"{med(lat[s]):>13}{p99:>8.2f}")


if __name__ == "__main__":
    main()
