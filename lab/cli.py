"""The lab's command line: `sentinel-haproxy demo` and `sentinel-haproxy drill [--compare]
[--partition a|b|c]`.

The daemon's CLI (controller.cli) hands these commands their argv unparsed; everything about
them (flags, help, exit codes) is here. Exit codes: 0 done, 1 failed, 2 bad usage (or, without
--yes, only the plan was printed), 130 interrupted.
Must not contain measurement or stack logic: it parses, calls lab modules and prints.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from types import FrameType

from controller import __version__
from controller.haproxy import HAProxyError
from controller.model import Address
from controller.settings import Settings
from lab.compare import SCENARIOS, SETUPS, run_compare, table
from lab.demo import run_demo, say
from lab.drill import METHODS, DrillError, DrillSpec, PidActions, plan_text, run_drill
from lab.localstack import Layout, PortInUseError
from lab.measure import format_report, format_timeline, summarize, timeline
from lab.netns import NetnsError, unavailable_reason
from lab.partition import CUT_S, PartitionError, reports_of, run_in_namespace
from lab.partition import METRICS as PARTITION_METRICS
from lab.partition import SCENARIOS as PARTITIONS
from lab.probes import current_master
from lab.procs import ProcessError
from lab.wait import WaitTimeout

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sentinel-haproxy")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "demo",
        help="start the reference layout locally and run a live failover",
        description="Start 6 redis-server, 3 sentinels, HAProxy and the controller on this "
        "machine (loopback addresses 127.0.0.2-7 and 127.0.0.20-22), print the port map, kill "
        "a master while writing through HAProxy and show what happens.",
    )
    d = Layout()
    p.add_argument("--first-port", type=int, metavar="PORT", default=d.first_frontend_port,
                   help="first HAProxy frontend port: group i writes on first+2i, reads on "
                   f"first+2i+1 (default {d.first_frontend_port})")
    p.add_argument("--stats-port", type=int, metavar="PORT", default=d.stats_port)
    p.add_argument("--redis-port", type=int, metavar="PORT", default=d.redis_port)
    p.add_argument("--sentinel-port", type=int, metavar="PORT", default=d.sentinel_port)
    p.add_argument("--group", metavar="GROUP", default="redis1",
                   help="group whose master is killed (default redis1)")
    p.add_argument("--workdir", metavar="DIR",
                   help="where configs and logs go (default: a new temp dir, removed on success)")
    p.add_argument("--keep", action="store_true", help="leave the stack running until Ctrl-C")
    p.add_argument("--no-failover", "--quick", action="store_true",
                   help="start, print the map, stop (no failover)")
    p.add_argument("--generated-config", action="store_true",
                   help="HAProxy runs the config `sentinel-haproxy config` generates (server "
                   "slots the controller fills from Sentinel) instead of haproxy/haproxy.cfg")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "drill",
        help="measured failover against a running stack (writes, reads, events, lost writes)",
        description="Write and read through HAProxy while a failover happens; report the write "
        "outage, the time from Sentinel's promotion to the first write on the new master, "
        "acknowledged writes lost and read errors. Destructive steps need --yes.",
    )
    p.add_argument("--sentinel", dest="sentinels", action="append", metavar="HOST:PORT",
                   help="a Sentinel; repeat or comma-separate")
    p.add_argument("--write", metavar="HOST:PORT", help="HAProxy write frontend")
    p.add_argument("--read", metavar="HOST:PORT", help="HAProxy read frontend")
    p.add_argument("--master", metavar="NAME", default="redis1")
    p.add_argument("--method", choices=METHODS, default="kill",
                   help="kill: SIGKILL the master; pause: SIGSTOP it for --pause-s; failover: "
                   "SENTINEL FAILOVER (works on any stack); hold: SIGSTOP + SENTINEL FAILOVER + "
                   "SIGCONT; replica-kill: SIGKILL a replica")
    p.add_argument("--pause-s", type=float, metavar="S", default=5.0)
    p.add_argument("--pid-of", action="append", default=[], metavar="HOST:PORT=PID",
                   help="PID of a Redis node (else INFO process_id when the node is on loopback)")
    p.add_argument("--duration-s", type=float, metavar="S", default=30.0,
                   help="longest wait for writes on the new master (30)")
    p.add_argument("--haproxy-socket", metavar="PATH",
                   help="also record HAProxy server changes from this admin socket")
    p.add_argument("--writers", type=int, metavar="N", default=2)
    p.add_argument("--json", action="store_true")
    p.add_argument("--yes", action="store_true",
                   help="really do it (without: print what would be done)")
    p.add_argument("--compare", action="store_true",
                   help="start one local stack per setup (the classic role-check HAProxy, the "
                   "redis-ha chart's HAProxy, the controller) and run the scenarios on all of "
                   "them side by side")
    p.add_argument("--setup", dest="setups", action="append", metavar="NAME",
                   help="--compare: classic, redis-ha, controller (repeatable; default all)")
    p.add_argument("--replicas", type=int, metavar="N", default=1,
                   help="--compare: replicas per group (1: 2-node groups as in the reference "
                   "layout; 2: 3-node groups)")
    p.add_argument("--repeat", type=int, metavar="N", default=1,
                   help="--compare: repetitions (median and worst)")
    p.add_argument("--scenario", dest="scenarios", action="append", metavar="NAME",
                   help=f"--compare: {', '.join(SCENARIOS)} (repeatable or "
                   "comma-separated; default all)")
    p.add_argument("--plot", metavar="FILE.svg", action="append",
                   help="--compare: write a timeline plot, SVG or PNG by suffix (repeatable; "
                   "needs matplotlib: pip install 'sentinel-haproxy[plot]')")
    p.add_argument("--workdir", metavar="DIR",
                   help="--compare: where the stacks run (default a temp dir)")
    p.add_argument("--controller-arg", dest="controller_args", action="append", default=[],
                   metavar="ARG",
                   help="--compare, --partition: extra argument for the controller daemon, "
                   "e.g. --controller-arg=--read-fallback-to-master (repeatable)")
    p.add_argument("--partition", dest="partitions", action="append", metavar="a|b|c",
                   help="network partition drill(s), in a network namespace made for them "
                   "(root): " + "; ".join(f"{k}: {v}" for k, v in PARTITIONS.items())
                   + ". The controller alone, or with --compare every setup (or --setup) "
                   "side by side. Repeatable or comma-separated")
    p.add_argument("--cut-s", type=float, metavar="S", default=CUT_S,
                   help=f"--partition: how long each cut lasts (default {CUT_S:g})")
    p.add_argument("--redis-directive", dest="redis_directives", action="append", default=[],
                   metavar="LINE",
                   help="--partition: an extra redis.conf line for every node, e.g. "
                   "--redis-directive 'min-replicas-to-write 1' (repeatable)")
    p.set_defaults(func=cmd_drill)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM stops a demo or a drill as Ctrl-C does: the stacks it started are stopped (a
    # drill killed with SIGTERM used to leave its Redis, Sentinels, HAProxy and daemon running).
    old_term = signal.signal(signal.SIGTERM, _on_term)
    try:
        code: int = args.func(args)
    finally:
        signal.signal(signal.SIGTERM, old_term)
    return code


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled where Ctrl-C is."""


def _on_term(signum: int, _frame: FrameType | None) -> None:
    raise _Terminated(signal.Signals(signum).name)


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        layout = Layout(
            redis_port=args.redis_port, sentinel_port=args.sentinel_port,
            first_frontend_port=args.first_port, stats_port=args.stats_port,
        )
        if args.group not in layout.groups:
            raise ValueError(f"--group {args.group!r}: one of {', '.join(layout.groups)}")
    except ValueError as e:
        print(f"sentinel-haproxy demo: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    temp = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sentinel-haproxy-demo-"))
    # Ctrl-C must stop the demo even when started from a shell that ignores SIGINT.
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    code = EXIT_FAILED
    try:
        run_demo(layout, workdir, args.group, failover=not args.no_failover, keep=args.keep,
                 generated=args.generated_config)
        code = EXIT_OK
    except PortInUseError as e:
        print(f"sentinel-haproxy demo: error: {e}; free it or choose other ports "
              "(--first-port, --stats-port, --redis-port, --sentinel-port)", file=sys.stderr)
        code = EXIT_USAGE
    except (ProcessError, WaitTimeout, DrillError, HAProxyError, OSError) as e:
        print(f"sentinel-haproxy demo: failed: {e}", file=sys.stderr)
        print(f"logs kept in {workdir}", file=sys.stderr)
        code = EXIT_FAILED
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (_Terminated)
        say("\ninterrupted: everything stopped")
        code = EXIT_OK if args.keep else 130
    finally:
        signal.signal(signal.SIGINT, old_int)
    if code == EXIT_OK and temp:
        shutil.rmtree(workdir, ignore_errors=True)
    elif code not in (EXIT_OK, EXIT_USAGE):
        print(f"logs: {workdir}", file=sys.stderr)
    return code




def _split(values: Sequence[str] | None) -> list[str]:
    return [x.strip() for v in values or [] for x in v.split(",") if x.strip()]


def cmd_drill(args: argparse.Namespace) -> int:
    if args.partitions:
        return cmd_partition(args)
    if args.compare:
        return cmd_compare(args)
    try:
        sentinels = [Address.parse(s) for s in _split(args.sentinels)]
        if not sentinels or not args.write:
            raise ValueError("give at least one --sentinel HOST:PORT and --write HOST:PORT "
                             "(or --compare)")
        pid_of: dict[str, int] = {}
        for item in args.pid_of:
            addr, _, pid = item.rpartition("=")
            Address.parse(addr)
            if not pid.isdigit():
                raise ValueError(f"--pid-of {item!r}: expected HOST:PORT=PID")
            pid_of[addr] = int(pid)
        spec = DrillSpec(
            sentinels=sentinels, write=Address.parse(args.write), master=args.master,
            method=args.method,
            read=Address.parse(args.read) if args.read else None,
            pause_s=args.pause_s, duration_s=args.duration_s,
            writers=max(1, args.writers), haproxy_socket=args.haproxy_socket,
            backends=(Settings().write_backend.format(master=args.master),
                      Settings().read_backend.format(master=args.master)),
        )
        if spec.method == "hold":
            spec.write_timeout_s = 15.0
    except ValueError as e:
        print(f"sentinel-haproxy drill: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    actions = PidActions(pid_of)
    if not args.yes:
        old = current_master(spec.sentinels, spec.master) or "<unknown master>"
        print("drill would (add --yes to do it):")
        for step in plan_text(spec, actions, old):
            print(f"  - {step}")
        return EXIT_USAGE
    progress = None if args.json else (lambda m: print(f"  .. {m}", flush=True))
    try:
        rec = run_drill(spec, actions, progress=progress)
    except DrillError as e:
        print(f"sentinel-haproxy drill: {e}", file=sys.stderr)
        return EXIT_FAILED
    report = summarize(rec)
    if args.json:
        json.dump({"report": asdict(report), "timeline": [
            {"ms": round(t, 1), "who": who, "what": what} for t, who, what in timeline(rec)
        ]}, sys.stdout, indent=2)
        print()
    else:
        print(format_report(report))
        print("timeline (ms since the fault):")
        print(format_timeline(timeline(rec)))
    return EXIT_OK if report.failed_over or spec.method == "replica-kill" else EXIT_FAILED


def cmd_compare(args: argparse.Namespace) -> int:
    scenarios = _split(args.scenarios) or list(SCENARIOS)
    setups = _split(args.setups) or list(SETUPS)
    bad = [s for s in scenarios if s not in SCENARIOS] + [s for s in setups if s not in SETUPS]
    if bad or args.repeat < 1 or not 1 <= args.replicas <= 4:
        print(f"sentinel-haproxy drill --compare: error: unknown scenario(s) or setup(s) {bad} "
              f"(scenarios: {', '.join(SCENARIOS)}; setups: {', '.join(SETUPS)}), or --repeat "
              "< 1, or --replicas not 1-4", file=sys.stderr)
        return EXIT_USAGE
    if not args.yes:
        print(f"drill --compare would (add --yes to do it): start {len(setups)} local one-group "
              f"stacks of {args.replicas + 1} nodes ({', '.join(setups)}) in a temp dir and run, "
              f"{args.repeat} time(s), on all at once: ")
        for s in scenarios:
            print(f"  - {s}: {SCENARIOS[s]}")
        if args.controller_args:
            print(f"  (controller run with: {' '.join(args.controller_args)})")
        return EXIT_USAGE
    temp = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sentinel-haproxy-compare-"))
    try:
        results = run_compare(workdir, scenarios, args.repeat,
                              controller_args=args.controller_args, setups=setups,
                              replicas=args.replicas)
    except (DrillError, ProcessError, WaitTimeout, HAProxyError, OSError) as e:
        print(f"sentinel-haproxy drill --compare: failed: {e}\nlogs kept in {workdir}",
              file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted: every stack stopped", file=sys.stderr)
        return 130
    reports = {
        sc: {setup: [summarize(r[setup]) for r in runs] for setup in setups}
        for sc, runs in results.items()
    }
    if args.json:
        json.dump({sc: {setup: [asdict(r) for r in rs] for setup, rs in by.items()}
                   for sc, by in reports.items()}, sys.stdout, indent=2)
        print()
    else:
        for sc in scenarios:
            print(table(sc, reports[sc]))
            print()
    if args.plot:
        from lab.plot import PlotUnavailable, plot_compare  # matplotlib: only when asked

        for path in args.plot:
            try:
                plot_compare({sc: runs[0] for sc, runs in results.items()}, Path(path), setups)
                print(f"plot (first repetition) written to {path}", file=sys.stderr)
            except PlotUnavailable as e:
                print(f"no plot: {e}", file=sys.stderr)
                break
    if temp:
        shutil.rmtree(workdir, ignore_errors=True)
    return EXIT_OK


def cmd_partition(args: argparse.Namespace) -> int:
    scenarios = _split(args.partitions)
    setups = _split(args.setups) or (list(SETUPS) if args.compare else ["controller"])
    bad = [s for s in scenarios if s not in PARTITIONS] + [s for s in setups if s not in SETUPS]
    if bad or args.repeat < 1 or not 1 <= args.replicas <= 4 or args.cut_s <= 0:
        print(f"sentinel-haproxy drill --partition: error: unknown scenario(s) or setup(s) "
              f"{bad} (scenarios: {', '.join(PARTITIONS)}; setups: {', '.join(SETUPS)}), or "
              "--repeat < 1, --replicas not 1-4, or --cut-s <= 0", file=sys.stderr)
        return EXIT_USAGE
    if not args.yes:
        print(f"drill --partition would (add --yes to do it): make a network namespace, start "
              f"{len(setups)} local one-group stacks of {args.replicas + 1} nodes "
              f"({', '.join(setups)}) inside it and run, {args.repeat} time(s), on all at "
              f"once, each cut lasting {args.cut_s:g} s:")
        for s in scenarios:
            print(f"  - {s}: {PARTITIONS[s]}")
        if args.controller_args:
            print(f"  (controller run with: {' '.join(args.controller_args)})")
        if args.redis_directives:
            print(f"  (every node's redis.conf also has: {'; '.join(args.redis_directives)})")
        return EXIT_USAGE
    reason = unavailable_reason()
    if reason is not None:
        print(f"sentinel-haproxy drill --partition: cannot run here: {reason}", file=sys.stderr)
        return EXIT_FAILED
    temp = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="sentinel-haproxy-partition-"))
    try:
        doc = run_in_namespace(scenarios, setups, args.repeat, args.cut_s, args.replicas,
                               args.controller_args, args.redis_directives, workdir)
    except (PartitionError, NetnsError, OSError, ValueError) as e:
        print(f"sentinel-haproxy drill --partition: failed: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted: the namespace and everything in it are gone", file=sys.stderr)
        return 130
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        print()
    else:
        for sc in scenarios:
            print(table(sc, reports_of(doc, sc), PARTITIONS[sc], PARTITION_METRICS))
            print()
        if doc["controller_problems"]:
            print("controller problems:\n  " + "\n  ".join(doc["controller_problems"]))
        print(f"({doc['seconds']:.0f} s inside the namespace)", file=sys.stderr)
    if temp and not doc["controller_problems"]:
        shutil.rmtree(workdir, ignore_errors=True)
    return EXIT_FAILED if doc["controller_problems"] else EXIT_OK
