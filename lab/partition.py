"""Partition drills (`sentinel-haproxy drill --partition a|b|c [--compare]`): network splits
between the real processes of local stacks, measured like every drill.

Scenarios (one group; "the replicas" are every node but the master):
- a: the master is cut off from the Sentinels and its replicas; HAProxy (and so the clients)
     still reach it. Sentinel fails over on the majority side.
- b: HAProxy, the controller, the clients and the old master (everything on 127.0.0.1, plus the
     master's address) are cut off from the Sentinels and the replicas: the minority side keeps
     serving, the majority fails over.
- c: one Sentinel (the first) is cut off from everything. Nothing should change.

How: `run_in_namespace()` (the caller's side) makes a fresh network namespace (lab.netns) and
runs this module inside it (`python -m lab.partition`), where every 127.0.0.x address is the
namespace's own loopback. Inside, `main()` starts one stack per setup with lab.compare (classic,
redis-ha, controller), each sentinel also listening on an observer address that no cut touches
(the drill's own view of Sentinel), and runs each scenario on all setups at once with
lab.drill's writers, readers and recorders: at the fault time it drops, with iptables in the
namespace, every packet between the two sides (DROP, not REJECT: a real partition is silent,
so every party has to notice it by its own timeouts, as in production; REJECT would announce
it at once with resets); it heals the cut `cut_s` later, waits for writes on the Sentinels'
master and (a, b) for Sentinel to convert the old master, and reads every acknowledged write
back. lab.measure gives the numbers; `partition_report` adds the partition's own. The report
goes to stdout as one JSON line.

Must not change the host's network or firewall (lab.netns refuses to cut anything outside a
namespace it did not make), nor leave processes or rules behind: stacks are stopped by PID, the
cuts healed, and the namespace (with whatever is left in it) deleted by the caller.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

from controller.model import Address
from lab.compare import (
    GROUP,
    SETUPS,
    Setup,
    all_at_once,
    restore,
    run_measured,
    spec_for,
    started,
    wait_conversion,
)
from lab.drill import DrillError, DrillRun
from lab.localstack import Layout
from lab.measure import (
    Recording,
    first_ok_on,
    lost_acks,
    ms,
    routing_change,
    summarize,
    timeline,
)
from lab.netns import Cut, Firewall, Namespace, NetnsError, own_namespace_inode

SCENARIOS: dict[str, str] = {
    "a": "master cut off from the Sentinels and its replicas (HAProxy still reaches it)",
    "b": "HAProxy, controller, clients and old master cut off from the Sentinels and replicas",
    "c": "one Sentinel cut off from everything",
}
#: Where HAProxy's frontends, its outgoing connections, the controller and the clients are.
CLIENT_SIDE = "127.0.0.1"
#: Default partition length: longer than Sentinel's failover (down-after 2 s + election ~1 s)
#: and than `min-replicas-max-lag 10`, so that both show.
CUT_S = 12.0
TAIL_S = 3.0

#: Table rows of a partition drill: (key of the report, label); all "bigger is worse".
METRICS: tuple[tuple[str, str], ...] = (
    ("write_outage_ms", "write outage, worst writer (surviving acks), ms"),
    ("acked_lost", "acknowledged writes lost"),
    ("acked_old_after_cut", "writes acked by the old master after the cut"),
    ("out_ms", "cut -> old master out of the write routing, ms"),
    ("acked_old_after_out", "writes acked by the old master after it was out"),
    ("lost_last_ms", "cut -> last acknowledged write lost, ms"),
    ("first_write_new_ms", "cut -> first write on the new master, ms"),
    ("heal_to_write_ms", "heal -> first write on the Sentinels' master, ms"),
    ("writes_failed", "write errors"),
    ("haproxy_changes", "HAProxy routing changes after the cut"),
    ("read_outage_ms", "read outage, worst reader (longest), ms"),
)
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class PartitionError(RuntimeError):
    """A partition drill could not run or finish (the message says what to check)."""


# --------------------------------------------------------------------------- the cuts


def cut_for(scenario: str, layout: Layout, old_master_host: str, name: str) -> Cut:
    """The two sides of `scenario` on a stack of `layout` whose master is at
    `old_master_host`."""
    nodes = {n.host for n in layout.nodes().values()}
    sentinels = layout.sentinel_hosts()
    if old_master_host not in nodes:
        raise ValueError(f"{old_master_host} is not a node of the layout")
    majority = set(sentinels) | (nodes - {old_master_host})
    if scenario == "a":
        return Cut(name, frozenset({old_master_host}), frozenset(majority))
    if scenario == "b":
        return Cut(name, frozenset({old_master_host, CLIENT_SIDE}), frozenset(majority))
    if scenario == "c":
        lone = sentinels[0]
        return Cut(name, frozenset({lone}),
                   frozenset(nodes | set(sentinels[1:]) | {CLIENT_SIDE}))
    raise ValueError(f"unknown partition scenario {scenario!r}")


class PartitionFault:
    """The drill's fault (lab.drill.Fault): the scenario's cut on one setup's stack, decided
    at the fault time from the master the drill found, healed by the drill."""

    def __init__(self, firewall: Firewall, scenario: str, setup: Setup) -> None:
        self.firewall = firewall
        self.scenario = scenario
        self.setup = setup
        self.cut: Cut | None = None

    def inject(self, run: DrillRun) -> str:
        stack = self.setup.stack
        self.cut = cut_for(self.scenario, stack.layout, Address.parse(run.old_master).host,
                           f"shx-{self.setup.name}-{self.scenario}")
        self.firewall.cut(self.cut)
        return (f"partition {self.scenario}: cut {{{', '.join(sorted(self.cut.side_a))}}} | "
                f"{{{', '.join(sorted(self.cut.side_b))}}}")

    def heal(self) -> str:
        if self.cut is not None:
            self.firewall.heal(self.cut.name)
        return f"partition {self.scenario} healed"


# --------------------------------------------------------------------------- one drill


def run_one(setup: Setup, scenario: str, firewall: Firewall, cut_s: float = CUT_S,
            tail_s: float = TAIL_S) -> Recording:
    """One partition drill on one setup (see the module doc)."""
    stack = setup.stack
    spec = replace(spec_for(setup, "kill"), method=f"partition-{scenario}",
                   sentinels=list(stack.observer_sentinel_addrs), pause_s=cut_s,
                   duration_s=cut_s + 30.0,
                   prefix=f"part:{setup.name}:{scenario}:{int(time.time() * 1000)}")

    def after(run: DrillRun) -> None:
        if scenario in ("a", "b") and run.new_master is not None:
            wait_conversion(run, run.old_master, run.heal_t or time.time(), 30.0, tail_s)
        else:
            time.sleep(tail_s)

    rec = run_measured(setup, spec, after, PartitionFault(firewall, scenario, setup))
    # Sentinel events were recorded through the observer addresses: name the sentinels.
    real = {str(o): str(a) for o, a in zip(stack.observer_sentinel_addrs,
                                           stack.sentinel_addrs, strict=True)}
    return replace(rec, marks=tuple(replace(m, source=real.get(m.source, m.source))
                                    for m in rec.marks))


@dataclass(frozen=True)
class PartitionNumbers:
    """What a partition adds to a drill's numbers. Durations in ms; None: did not happen."""

    cut_ms: float | None  # how long the cut lasted
    out_ms: float | None  # cut -> the old master's write server stopped being routable
    acked_old_after_cut: int  # writes acked by the old master, sent after the cut
    acked_old_after_out: int | None  # ... sent after its write server stopped being routable
    lost_first_ms: float | None  # cut -> first / last acknowledged write that was lost
    lost_last_ms: float | None
    heal_to_write_ms: float | None  # heal -> first write acked by the final master after it
    haproxy_changes: int  # routability changes in the group's backends after the cut
    controller_commands: int | None  # server state changes the controller applied after the cut


def partition_numbers(rec: Recording, write_backend: str, old_master_name: str,
                      has_controller: bool) -> PartitionNumbers:
    """The partition's own numbers from a drill's recording (pure)."""
    old = rec.old_master
    final = rec.new_master or old
    out_t = routing_change(rec.marks, f"{write_backend}/{old_master_name}", False, rec.fault_t)
    lost = [w.t - rec.fault_t for w in lost_acks(rec.writes, rec.readback)]
    acked_old = [w for w in rec.writes if w.ok and w.node == old and w.sent >= rec.fault_t]
    after_heal = first_ok_on([w for w in rec.writes if rec.heal_t is not None
                              and w.sent >= rec.heal_t], final, rec.heal_t or rec.end_t)
    return PartitionNumbers(
        cut_ms=ms(rec.fault_t, rec.heal_t),
        out_ms=ms(rec.fault_t, out_t),
        acked_old_after_cut=len(acked_old),
        acked_old_after_out=None if out_t is None
        else sum(1 for w in acked_old if w.sent >= out_t),
        lost_first_ms=round(min(lost) * 1000, 1) if lost else None,
        lost_last_ms=round(max(lost) * 1000, 1) if lost else None,
        heal_to_write_ms=ms(rec.heal_t, after_heal),
        haproxy_changes=sum(1 for m in rec.marks if m.kind == "haproxy" and m.t >= rec.fault_t),
        controller_commands=sum(1 for m in rec.marks if m.kind == "controller"
                                and m.t >= rec.fault_t and m.text.startswith("set "))
        if has_controller else None,
    )


def partition_report(rec: Recording, setup: Setup) -> dict[str, Any]:
    """The drill's numbers (lab.measure) and the partition's, as one flat dict."""
    stack = setup.stack
    extra = partition_numbers(rec, stack.write_backend(GROUP), stack.node_named(rec.old_master),
                              setup.ctl is not None)
    return {**asdict(summarize(rec)), **asdict(extra)}


# --------------------------------------------------------------------------- inside


class _Terminated(Exception):
    pass


def _on_term(signum: int, _frame: FrameType | None) -> None:
    raise _Terminated(signal.Signals(signum).name)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_inside(
    firewall: Firewall, workdir: Path, scenarios: Sequence[str], setups: Sequence[str],
    repeat: int = 1, cut_s: float = CUT_S, replicas: int = 1,
    controller_args: Sequence[str] = (), redis_directives: Sequence[str] = (),
) -> dict[str, Any]:
    """Run the scenarios inside this process' namespace, cutting with `firewall`, and return
    the report document (see `run_in_namespace`)."""
    t0 = time.monotonic()
    doc: dict[str, Any] = {
        "setups": list(setups), "cut_s": cut_s, "replicas": replicas, "repeat": repeat,
        "controller_args": list(controller_args), "redis_directives": list(redis_directives),
        "scenarios": {sc: {"title": SCENARIOS[sc], "runs": {s: [] for s in setups},
                           "timelines": {s: [] for s in setups}} for sc in scenarios},
    }
    holder: list[Setup] = []
    try:
        with started(workdir, setups, replicas, controller_args, observer_aliases=True,
                     redis_directives=tuple(redis_directives)) as running:
            holder = running
            for i in range(repeat):
                for sc in scenarios:
                    _say(f"[{i + 1}/{repeat}] partition {sc}: {SCENARIOS[sc]}")

                    def one(setup: Setup, scenario: str) -> Recording:
                        return run_one(setup, scenario, firewall, cut_s)

                    recs = all_at_once(running, sc, one)
                    firewall.heal_all()
                    for s in running:
                        rec = recs[s.name]
                        doc["scenarios"][sc]["runs"][s.name].append(partition_report(rec, s))
                        doc["scenarios"][sc]["timelines"][s.name].append(
                            [{"ms": round(t, 1), "who": who, "what": what}
                             for t, who, what in timeline(rec)])
                    for s in running:
                        restore(s)
    finally:
        firewall.heal_all()
    doc["controller_problems"] = [p for s in holder if s.ctl is not None
                                  for p in s.ctl.problems()]
    doc["seconds"] = round(time.monotonic() - t0, 1)
    return doc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lab.partition",
        description="Run partition drills INSIDE a network namespace made for them (this is "
        "what `sentinel-haproxy drill --partition` runs through `ip netns exec`); prints one "
        "JSON line. Refuses to run in the host's network namespace.")
    p.add_argument("--netns", metavar="NAME", required=True,
                   help="the namespace it must be running in")
    p.add_argument("--outside-netns-inode", type=int, metavar="N",
                   help="inode of the network namespace it must NOT be running in (the one "
                   "that made the namespace)")
    p.add_argument("--workdir", metavar="DIR", required=True)
    p.add_argument("--scenario", dest="scenarios", action="append", required=True,
                   metavar="a|b|c")
    p.add_argument("--setup", dest="setups", action="append", metavar="NAME")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--cut-s", type=float, default=CUT_S)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--controller-arg", dest="controller_args", action="append", default=[])
    p.add_argument("--redis-directive", dest="redis_directives", action="append", default=[])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    scenarios = _split(args.scenarios)
    setups = _split(args.setups) or ["controller"]
    bad = [s for s in scenarios if s not in SCENARIOS] + [s for s in setups if s not in SETUPS]
    if bad:
        print(f"unknown scenario(s) or setup(s): {bad}", file=sys.stderr)
        return EXIT_USAGE
    refusal = Firewall.refusal(args.netns, args.outside_netns_inode)
    if refusal is not None:
        print(f"lab.partition: {refusal}", file=sys.stderr)
        return EXIT_USAGE
    old_term = signal.signal(signal.SIGTERM, _on_term)
    try:
        doc = run_inside(Firewall(args.netns, args.outside_netns_inode), Path(args.workdir),
                         scenarios, setups, args.repeat, args.cut_s, args.replicas,
                         args.controller_args, args.redis_directives)
    except (DrillError, NetnsError, OSError, RuntimeError, _Terminated) as e:
        print(f"lab.partition: failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, old_term)
    print(json.dumps(doc), flush=True)
    return EXIT_OK


def _split(values: Sequence[str] | None) -> list[str]:
    return [x.strip() for v in values or [] for x in v.split(",") if x.strip()]


# --------------------------------------------------------------------------- outside


def time_bound_s(scenarios: Sequence[str], setups: Sequence[str], repeat: int,
                 cut_s: float) -> float:
    """A generous bound on a whole run: start-up, then per scenario the cut, the wait for
    writes and conversion, and the restore."""
    return 120.0 + 15.0 * len(setups) + repeat * len(scenarios) * (cut_s + 150.0)


def run_in_namespace(
    scenarios: Sequence[str], setups: Sequence[str] = ("controller",), repeat: int = 1,
    cut_s: float = CUT_S, replicas: int = 1, controller_args: Sequence[str] = (),
    redis_directives: Sequence[str] = (), workdir: Path | None = None,
    progress: Callable[[str], None] | None = None, timeout_s: float | None = None,
) -> dict[str, Any]:
    """Make a namespace, run the drills inside it (`python -m lab.partition`), delete it
    (stopping whatever is left inside by PID) and return the report document:
    {"scenarios": {sc: {"title", "runs": {setup: [report, ...]}, "timelines": ...}},
     "controller_problems": [...], "seconds": ..., and the run's parameters}.
    Progress lines of the inner run go to stderr (or to `progress`)."""
    work = workdir or Path(tempfile.mkdtemp(prefix="sentinel-haproxy-partition-"))
    work.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "lab.partition", "--workdir", str(work),
            "--scenario", ",".join(scenarios), "--setup", ",".join(setups),
            "--repeat", str(repeat), "--cut-s", str(cut_s), "--replicas", str(replicas),
            *(f"--controller-arg={a}" for a in controller_args),
            *(f"--redis-directive={d}" for d in redis_directives)]
    bound = timeout_s or time_bound_s(scenarios, setups, repeat, cut_s)
    with Namespace() as ns:
        res = ns.run([*argv, "--netns", ns.name,
                      f"--outside-netns-inode={own_namespace_inode()}"], bound,
                     stderr=None if progress is None else subprocess.PIPE)
    if progress is not None:
        for line in res.stderr.splitlines():
            progress(line)
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    if res.returncode != 0 or not lines:
        tail = "\n".join(res.stderr.splitlines()[-15:])
        raise PartitionError(f"partition drill failed (exit {res.returncode}); logs in {work}"
                             + (f":\n{tail}" if tail else ""))
    doc: dict[str, Any] = json.loads(lines[-1])
    doc["workdir"] = str(work)
    doc["netns"] = ns.name
    return doc


def reports_of(doc: Mapping[str, Any], scenario: str) -> dict[str, list[dict[str, Any]]]:
    """setup -> that scenario's reports, from a report document."""
    runs: dict[str, list[dict[str, Any]]] = doc["scenarios"][scenario]["runs"]
    return runs


if __name__ == "__main__":
    sys.exit(main())
