"""Failover through the STRONGEST HAProxy-only peer (the redis-ha Helm chart's config,
haproxy/haproxy-redis-ha.cfg) vs the classic role-check recipe (haproxy/haproxy-classic.cfg).

Two one-group LocalStacks (2 nodes, 3 sentinels, down-after-milliseconds as the local stack
uses, 2000 ms) run side by side; each scenario of `drill --compare` (controller/compare.py) runs
on both at the same moment with the same clients (2 writers, 2 readers, every 5 ms):
- kill:   SIGKILL of the master;
- return: SIGKILL of the master, then the old master restarted with its own config 0.5 s after
          writes reach the new master (a master again until Sentinel converts it ~10 s later).
One repetition runs kill, return, return, kill: each `return` direction once (the returning
old master is redis1a in one, redis1b in the other; the redis-ha config's `use-server` rules are
evaluated in server order, redis1a's first, so the two directions are reported apart).
Between runs both stacks are restored (not measured). Reported per setup, over the runs:
median [min-max] of SIGKILL -> first write acked by the new master through HAProxy, the worst
writer's outage, acknowledged writes lost (missing from the final master) and writes acked by a
non-master after the fault (for `return`: acked by the returned old master), plus for the
redis-ha config when 2 Sentinel votes for the new master were UP in HAProxy
(`nbsrv(check_if_<node>_is_master) ge 2`, the use-server condition) and, for `return`, the window
in which the returned old master acknowledged writes.

Usage: .venv/bin/python bench/peer_failover.py [-n 5] [--json FILE]
Stops every process it started (both stacks) on exit, Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from controller.compare import Setup, after_for, restore, spec_for
from controller.drill import Recording, run_drill, summarize
from controller.localstack import HAPROXY_CLASSIC_CONFIG, REPO_ROOT, Layout, LocalStack

GROUP = "redis1"
HAPROXY_REDIS_HA_CONFIG = REPO_ROOT / "haproxy" / "haproxy-redis-ha.cfg"
SETUPS = ("classic", "redis-ha")


def layouts() -> dict[str, Layout]:
    """Two one-group layouts on distinct loopback addresses and free ports."""
    return {
        "classic": Layout.for_tests(groups=(GROUP,), haproxy_config=HAPROXY_CLASSIC_CONFIG,
                                    first_node_ip=2, first_sentinel_ip=20),
        "redis-ha": Layout.for_tests(groups=(GROUP,), haproxy_config=HAPROXY_REDIS_HA_CONFIG,
                                     first_node_ip=40, first_sentinel_ip=60),
    }


@dataclass(frozen=True)
class Extra:
    """What `summarize` does not give: Sentinel votes in HAProxy, the returned old master."""

    votes_up_ms: float | None  # fault -> 2 check_if_<new>_is_master servers UP (redis-ha)
    old_back_ms: float | None  # fault -> old master restarted (return)
    old_acked_from_ms: float | None  # restart -> first write acked by the returned old master
    old_acked_until_ms: float | None  # restart -> last write acked by it


def check_backends(stack: LocalStack) -> tuple[str, ...]:
    return tuple(f"check_if_{n}_is_master" for n in stack.nodes)


def extra(rec: Recording, stack: LocalStack) -> Extra:
    new = rec.new_master
    node = stack.node_at(*_split(new)) if new else None
    votes_up: float | None = None
    if node is not None:
        be = f"check_if_{node.name}_is_master/"
        up: set[str] = set()
        for m in rec.marks:
            if m.kind == "haproxy" and m.source.startswith(be) and m.t >= rec.fault_t:
                if m.text == "UP":
                    up.add(m.source)
                else:
                    up.discard(m.source)
                if len(up) >= 2 and votes_up is None:
                    votes_up = m.t
    back = next((m.t for m in rec.marks if m.kind == "drill" and "restarted" in m.text), None)
    old_acks = [w.t for w in rec.writes
                if w.ok and w.node == rec.old_master and back is not None and w.t >= back]

    def rel(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round((b - a) * 1000, 1)

    return Extra(
        votes_up_ms=rel(rec.fault_t, votes_up),
        old_back_ms=rel(rec.fault_t, back),
        old_acked_from_ms=rel(back, min(old_acks)) if old_acks else None,
        old_acked_until_ms=rel(back, max(old_acks)) if old_acks else None,
    )


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


def run_one(setup: Setup, scenario: str) -> Recording:
    spec = spec_for(setup, scenario)
    if setup.name == "redis-ha":  # also watch the Sentinel-vote backends
        spec = replace(spec, backends=(*spec.backends, *check_backends(setup.stack)))
    return run_drill(spec, setup.actions(), after=after_for(setup, scenario))


def both(setups: Sequence[Setup], scenario: str) -> dict[str, Recording]:
    out: dict[str, Recording] = {}
    errors: dict[str, BaseException] = {}

    def one(s: Setup) -> None:
        try:
            out[s.name] = run_one(s, scenario)
        except BaseException as e:  # re-raised in the caller's thread
            errors[s.name] = e

    threads = [threading.Thread(target=one, args=(s,), name=f"peer-{s.name}") for s in setups]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    if errors:
        name, e = next(iter(errors.items()))
        raise RuntimeError(f"{scenario} on {name}: {e}") from e
    if len(out) != len(setups):
        raise RuntimeError(f"{scenario}: a drill did not finish within 180 s")
    return out


def cell(values: Sequence[float | None]) -> str:
    """'median [min-max] n' over the runs where it happened (+ how many it did not)."""
    got = [v for v in values if v is not None]
    missing = len(values) - len(got)
    if not got:
        return f"never (n={len(values)})"
    med = statistics.median(got)
    s = f"{med:.0f} [{min(got):.0f}-{max(got):.0f}] n={len(got)}"
    return s + (f" +{missing} never" if missing else "")


ROWS: tuple[tuple[str, str], ...] = (
    ("first_write_new_ms", "SIGKILL -> first write acked by new master, ms"),
    ("write_outage_ms", "write outage, worst writer (surviving acks), ms"),
    ("acked_lost", "acknowledged writes lost"),
    ("acked_elsewhere", "writes acked by a non-master after the fault"),
    ("writes_failed", "write errors"),
    ("read_outage_ms", "read outage, worst reader, ms"),
    ("votes_up_ms", "SIGKILL -> 2 Sentinel votes UP for new master, ms"),
    ("old_back_ms", "SIGKILL -> old master restarted, ms"),
    ("old_acked_from_ms", "restart -> first ack by returned old master, ms"),
    ("old_acked_until_ms", "restart -> last ack by returned old master, ms"),
)


def table(title: str, rows: dict[str, list[dict[str, Any]]]) -> str:
    runs = ", ".join(f"{s} {len(rows[s])}" for s in SETUPS)
    out = [f"{title} (runs: {runs}; side by side; median [min-max] n)",
           f"  {'':<52}{'classic':>30}{'redis-ha':>30}"]
    for key, label in ROWS:
        cells = [cell([r[key] for r in rows[s]]) for s in SETUPS]
        if all(c.startswith("never") for c in cells) and key in ("votes_up_ms",
                                                                 "old_acked_from_ms",
                                                                 "old_acked_until_ms",
                                                                 "old_back_ms"):
            continue
        out.append(f"  {label:<52}{cells[0]:>30}{cells[1]:>30}")
    return "\n".join(out)


def key_of(scenario: str, rec: Recording, stack: LocalStack) -> str:
    """The table a run goes to: `kill`, or `return` split by which node came back."""
    if scenario != "return":
        return scenario
    node = stack.node_at(*_split(rec.old_master))
    return f"return of {node.name if node else rec.old_master}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("-n", type=int, default=5,
                   help="repetitions of kill, return, return, kill (default 5)")
    p.add_argument("--json", type=Path, help="write every run's numbers to this file")
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("-n >= 1")
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    lays = layouts()
    setups: list[Setup] = []
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="peer-failover-") as tmp:
        try:
            for name in SETUPS:
                stack = LocalStack(Path(tmp) / name, lays[name])
                setups.append(Setup(name, stack))
                stack.start()
            for s in setups:
                restore(s)
            for i in range(args.n):
                for sc in ("kill", "return", "return", "kill"):
                    recs = both(setups, sc)
                    for s in setups:
                        rec = recs[s.name]
                        row = {**asdict(summarize(rec)), **asdict(extra(rec, s.stack))}
                        key = key_of(sc, rec, s.stack)
                        results.setdefault(key, {x: [] for x in SETUPS})[s.name].append(row)
                        print(f"[{i + 1}/{args.n}] {key} [{s.name}]: first "
                              f"{row['first_write_new_ms']} ms, outage {row['write_outage_ms']} "
                              f"ms, lost {row['acked_lost']}, elsewhere {row['acked_elsewhere']}, "
                              f"votes {row['votes_up_ms']} ms, old acked "
                              f"{row['old_acked_from_ms']}..{row['old_acked_until_ms']} ms",
                              file=sys.stderr, flush=True)
                    for s in setups:
                        restore(s)
        finally:
            for s in reversed(setups):
                s.stack.stop()
    print(f"bench/peer_failover.py: {args.n} repetition(s) of kill, return, return, kill; "
          f"2-node group, down-after {lays['classic'].down_after_ms} ms, "
          f"{time.monotonic() - t_start:.0f} s in all\n")
    for key in sorted(results):
        print(table(key, results[key]))
        print()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
