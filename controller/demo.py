"""`sentinel-haproxy demo`: the reference layout on this machine, and a live failover.

Starts 3 groups x 2 `redis-server`, 3 sentinels and HAProxy (controller/localstack.py) plus the
real controller daemon as a child process, prints which port reaches which node, then kills
the master of one group while writing through HAProxy and prints what happened, in order, with
milliseconds: Sentinel's events, the controller's HAProxy commands, the first failed write and
the first write acked by the new master; then restarts the old master (with its original
config, so it comes back as a master) and shows that it stays out of the write backend until
Sentinel converts it. `--keep` leaves everything running until Ctrl-C.
Must stop everything it started (by PID) on exit, Ctrl-C or error, and print where the logs
are when something fails.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from controller.drill import (
    DrillError,
    DrillRun,
    DrillSpec,
    Recording,
    first_ok_on,
    format_timeline,
    run_drill,
    summarize,
    timeline,
)
from controller.haproxy import HAProxyClient, HAProxyError
from controller.localstack import Layout, LocalStack, LocalStackError, PortInUseError
from controller.model import AdminState
from controller.probes import Mark, event_is_for, fmt_addr
from controller.sidecar import ControllerProcess, SidecarError, controller_marks

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class StackActions:
    """Drill actions on a LocalStack's own processes (by the PIDs it started)."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack

    def name(self, addr: str) -> str:
        host, _, port = addr.rpartition(":")
        node = self.stack.node_at(host, int(port))
        if node is None:
            raise DrillError(f"{addr} is not a node of this local stack")
        return node.name

    def kill(self, addr: str) -> None:
        self.stack.kill_node(self.name(addr))

    def pause(self, addr: str) -> None:
        self.stack.pause_node(self.name(addr))

    def resume(self, addr: str) -> None:
        self.stack.resume_node(self.name(addr))

    def restart(self, addr: str) -> bool:
        self.stack.start_node(self.name(addr))
        return True

    def describe(self, verb: str, addr: str) -> str:
        return f"{verb} {self.name(addr)} ({addr})"


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="start the reference layout locally and run a live failover",
        description="Start 6 redis-server, 3 sentinels, HAProxy and the controller on this "
        "machine (loopback addresses 127.0.0.2-7 and 127.0.0.20-22), print the port map, kill "
        "a master while writing through HAProxy and show what happens.",
    )
    d = Layout()
    p.add_argument("--first-port", dest="tool_first_port", type=int, metavar="PORT",
                   default=d.first_frontend_port,
                   help="first HAProxy frontend port: group i writes on first+2i, reads on "
                   f"first+2i+1 (default {d.first_frontend_port})")
    p.add_argument("--stats-port", dest="tool_stats_port", type=int, metavar="PORT",
                   default=d.stats_port)
    p.add_argument("--redis-port", dest="tool_redis_port", type=int, metavar="PORT",
                   default=d.redis_port)
    p.add_argument("--sentinel-port", dest="tool_sentinel_port", type=int, metavar="PORT",
                   default=d.sentinel_port)
    p.add_argument("--group", dest="tool_group", metavar="GROUP", default="redis1",
                   help="group whose master is killed (default redis1)")
    p.add_argument("--workdir", dest="tool_workdir", metavar="DIR",
                   help="where configs and logs go (default: a new temp dir, removed on success)")
    p.add_argument("--keep", dest="tool_keep", action="store_true",
                   help="leave the stack running until Ctrl-C")
    p.add_argument("--no-failover", "--quick", dest="tool_no_failover", action="store_true",
                   help="start, print the map, stop (no failover)")
    p.set_defaults(func=cmd_demo)


class _Terminated(Exception):
    pass


def _on_term(signum: int, _frame: FrameType | None) -> None:
    raise _Terminated(signal.Signals(signum).name)


def say(msg: str = "") -> None:
    print(msg, flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        layout = Layout(
            redis_port=args.tool_redis_port, sentinel_port=args.tool_sentinel_port,
            first_frontend_port=args.tool_first_port, stats_port=args.tool_stats_port,
        )
        if args.tool_group not in layout.groups:
            raise ValueError(f"--group {args.tool_group!r}: one of {', '.join(layout.groups)}")
    except ValueError as e:
        print(f"sentinel-haproxy demo: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    temp = args.tool_workdir is None
    workdir = Path(args.tool_workdir or tempfile.mkdtemp(prefix="sentinel-haproxy-demo-"))
    old_term = signal.signal(signal.SIGTERM, _on_term)
    # Ctrl-C must stop the demo even when started from a shell that ignores SIGINT.
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    code = EXIT_FAILED
    try:
        code = _demo(layout, workdir, args)
    except PortInUseError as e:
        print(f"sentinel-haproxy demo: error: {e}; free it or choose other ports "
              "(--first-port, --stats-port, --redis-port, --sentinel-port)", file=sys.stderr)
        code = EXIT_USAGE
    except (LocalStackError, SidecarError, DrillError, HAProxyError, OSError) as e:
        print(f"sentinel-haproxy demo: failed: {e}", file=sys.stderr)
        print(f"logs kept in {workdir}", file=sys.stderr)
        code = EXIT_FAILED
    except (KeyboardInterrupt, _Terminated):
        say("\ninterrupted: everything stopped")
        code = EXIT_OK if args.tool_keep else 130
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
    if code == EXIT_OK and temp:
        shutil.rmtree(workdir, ignore_errors=True)
    elif code not in (EXIT_OK, EXIT_USAGE):
        print(f"logs: {workdir}", file=sys.stderr)
    return code


def _demo(layout: Layout, workdir: Path, args: argparse.Namespace) -> int:
    n_groups = len(layout.groups)
    say(f"starting {2 * n_groups} redis-server, {layout.sentinels} redis-sentinel, haproxy and "
        f"the controller in {workdir}")
    t0 = time.monotonic()
    stack = LocalStack(workdir, layout)
    stack.check_ports()
    ctl: ControllerProcess | None = None
    with stack:
        sentinels = [fmt_addr(a) for a in stack.sentinel_addrs]
        ctl = ControllerProcess(sentinels, [str(stack.haproxy_socket)], workdir / "controller")
        try:
            ctl.start()
            ctl.wait_in_sync(layout.groups)
            say(f"ready in {time.monotonic() - t0:.1f} s")
            say(f"processes: {' '.join(str(p) for p in [*stack.pids(), ctl.pid] if p)}")
            print_map(stack, ctl)
            if not args.tool_no_failover:
                failover_demo(stack, ctl, args.tool_group)
            if args.tool_keep:
                keep_running(stack)
        finally:
            ctl.stop()
    say("stopped: every process the demo started is gone")
    return EXIT_OK


def routable(stack: LocalStack) -> dict[str, list[str]]:
    """Backend -> names of the servers HAProxy routes to now."""
    state = HAProxyClient(str(stack.haproxy_socket), 2.0).state()
    return {
        be: [s.name for s in servers.values() if s.admin is AdminState.READY and s.op_state == 2]
        for be, servers in state.backends.items()
    }


def print_map(stack: LocalStack, ctl: ControllerProcess) -> None:
    now = routable(stack)
    say("\nport map (HAProxy on 127.0.0.1; where each port leads right now):")
    for g in stack.layout.groups:
        w = ", ".join(f"{n} {fmt_addr(stack.nodes[n].addr)}" for n in now.get(f"{g}_master", []))
        r = ", ".join(f"{n} {fmt_addr(stack.nodes[n].addr)}"
                      for n in now.get(f"{g}_replicas", []))
        say(f"  {g}  write :{stack.write_port(g)} -> {w or 'nothing'}")
        say(f"  {' ' * len(g)}  read  :{stack.read_port(g)} -> {r or 'nothing'} (roundrobin)")
    say(f"  stats page      http://127.0.0.1:{stack.layout.stats_port}/")
    say(f"  sentinels       {', '.join(fmt_addr(a) for a in stack.sentinel_addrs)}")
    say(f"  haproxy socket  {stack.haproxy_socket}")
    say(f"  controller      pid {ctl.pid}, log {ctl.log_path}")


def failover_demo(stack: LocalStack, ctl: ControllerProcess, group: str) -> None:
    layout = stack.layout
    old_name = _master_name(stack, group)
    say(f"\nfailover of {group}: writing through :{stack.write_port(group)} and reading through "
        f":{stack.read_port(group)}, then SIGKILL of its master {old_name}")
    spec = DrillSpec(
        sentinels=list(stack.sentinel_addrs),
        write=("127.0.0.1", layout.write_port(group)),
        read=("127.0.0.1", layout.read_port(group)),
        master=group, method="kill", haproxy_socket=str(stack.haproxy_socket),
        backends=(f"{group}_master", f"{group}_replicas"), setup="controller",
        writers=1, interval_s=0.005, prefix="demo",
    )
    returned: dict[str, Any] = {}

    def after(run: DrillRun) -> None:
        old_master_returns(stack, run, old_name, returned)

    rec = run_drill(spec, StackActions(stack), after=after,
                    progress=lambda m: say(f"  .. {m}"))
    marks = controller_marks(ctl.lines(), rec.fault_t - 0.5, rec.end_t)
    rec = Recording(**{**rec.__dict__, "marks": tuple(sorted((*rec.marks, *marks),
                                                             key=lambda m: m.t))})
    print_failover(stack, rec, returned)


def _master_name(stack: LocalStack, group: str) -> str:
    addr = stack.master_addr(0, group)
    node = stack.node_at(*addr) if addr else None
    if node is None:
        raise DrillError(f"sentinel0 names no known master for {group}")
    return node.name


def old_master_returns(
    stack: LocalStack, run: DrillRun, name: str, out: dict[str, Any]
) -> None:
    """Restart the old master from its original config; watch the write backend until
    Sentinel converts it (`+convert-to-slave`), bounded."""
    time.sleep(1.0)
    node = stack.nodes[name]
    addr = fmt_addr(node.addr)
    say(f"  .. restarting the old master {name} with its original config (it comes back as a "
        "master)")
    stack.start_node(name)
    t_start = time.time()
    out["restart_t"] = t_start
    backend = f"{node.group}_master"
    states: list[tuple[float, str]] = []
    last = ""

    def converted(m: Mark) -> bool:
        return event_is_for(m, node.group) and addr in m.text

    deadline = time.monotonic() + 30
    mark: Mark | None = None
    while time.monotonic() < deadline:
        try:
            now = ", ".join(routable(stack).get(backend, [])) or "nothing"
        except HAProxyError as e:
            now = f"? ({e})"
        if now != last:
            states.append((time.time(), now))
            last = now
        mark = next((m for m in run.recorder.snapshot() if m.kind == "+convert-to-slave"
                     and m.t >= t_start and converted(m)), None)
        if mark is not None:
            break
        time.sleep(0.1)
    out["convert_t"] = mark.t if mark else None
    out["states"] = states
    out["role_after"] = stack.role(name)


def print_failover(stack: LocalStack, rec: Recording, returned: dict[str, Any]) -> None:
    r = summarize(rec)
    say("\ntimeline (ms since SIGKILL of the master):")
    say(format_timeline(timeline(rec)))

    def nm(addr: str | None) -> str:
        if addr is None:
            return "?"
        host, _, port = addr.rpartition(":")
        node = stack.node_at(host, int(port))
        return f"{node.name} ({addr})" if node else addr

    say("\nwrites through the write port:")
    if r.failed_over:
        t_new = first_ok_on(rec.writes, rec.new_master, rec.fault_t)
        acked_by = {w.node for w in rec.writes if w.ok and t_new and w.t >= t_new}
        say(f"  new master {nm(r.new_master)}; write outage {r.write_outage_ms} ms; first write "
            f"acked by {nm(r.new_master)} {r.first_write_new_ms} ms after the kill")
        say(f"  {r.switch_to_write_ms} ms after the first +switch-master, "
            f"{r.promoted_to_write_ms} ms after +promoted-slave")
        nodes = ", ".join(nm(a) for a in sorted(a for a in acked_by if a is not None))
        say(f"  after that, acks came from: {nodes or 'nobody'}")
    else:
        say("  NO failover happened within the drill (see the timeline)")
    say(f"  {r.writes_ok} writes acked, {r.writes_failed} failed; acknowledged writes lost: "
        f"{r.acked_lost} of {r.acked_checked} (read back from the final master)")
    say(f"  reads: {r.reads_ok} ok, {r.read_errors} errors after the kill")
    if r.read_errors:
        say("  (a 2-node group has no healthy replica from +odown until the old master rejoins as")
        say("   a replica: the read port refuses meanwhile; `run --read-fallback-to-master` lets")
        say("   the master serve reads in that window)")
    t_r = returned.get("restart_t")
    if t_r:
        say("\nold master back (restarted with its original config, role master):")
        for t, now in returned.get("states", []):
            say(f"  {(t - rec.fault_t) * 1000:+10.1f} ms  write backend routes to: {now}")
        conv = returned.get("convert_t")
        if conv:
            say(f"  {(conv - rec.fault_t) * 1000:+10.1f} ms  Sentinel: +convert-to-slave "
                f"({conv - t_r:.1f} s after the restart); role now: {returned.get('role_after')}")
        else:
            say("  no +convert-to-slave within 30 s")
        after_restart = [w for w in rec.writes if w.ok and w.t >= t_r]
        wrong = [w for w in after_restart if w.node != rec.new_master]
        say(f"  writes after the restart: {len(after_restart)} acked, {len(wrong)} of them by "
            "a node other than the Sentinel master")


def keep_running(stack: LocalStack) -> None:
    g = stack.layout.groups[0]
    say("\nthe stack keeps running; try:")
    say(f"  redis-cli -p {stack.write_port(g)} set foo bar")
    say(f"  redis-cli -p {stack.read_port(g)} get foo")
    say(f"  redis-cli -h {stack.sentinel_addrs[0][0]} -p {stack.sentinel_addrs[0][1]} "
        f"sentinel get-master-addr-by-name {g}")
    sentinels = ",".join(fmt_addr(a) for a in stack.sentinel_addrs)
    say(f"  sentinel-haproxy status --sentinel {sentinels} --haproxy-socket "
        f"{stack.haproxy_socket}")
    say(f"  sentinel-haproxy drill --sentinel {sentinels} --write 127.0.0.1:{stack.write_port(g)}"
        f" --read 127.0.0.1:{stack.read_port(g)} --master {g} --method failover --yes")
    say("Ctrl-C stops everything.")
    while True:
        time.sleep(1.0)
