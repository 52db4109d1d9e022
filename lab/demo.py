"""`sentinel-haproxy demo`: the reference layout on this machine, and a live failover.

Starts 3 groups x 2 `redis-server`, 3 sentinels and HAProxy (lab.localstack) plus the
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

import contextlib
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controller.haproxy import HAProxyError
from lab.daemon import ControllerDaemon
from lab.drill import DrillError, DrillRun, DrillSpec, run_drill
from lab.localstack import Layout, LocalStack, StackActions
from lab.measure import Recording, first_ok_on, format_timeline, summarize, timeline
from lab.probes import Mark, ReadSample, event_is_for
from lab.wait import WaitTimeout, wait_until

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def say(msg: str = "") -> None:
    print(msg, flush=True)


def run_demo(layout: Layout, workdir: Path, group: str, failover: bool = True,
             keep: bool = False) -> None:
    """Start the stack and the daemon, show the map, run the failover, stop everything."""
    n_groups = len(layout.groups)
    say(f"starting {2 * n_groups} redis-server, {layout.sentinels} redis-sentinel, haproxy and "
        f"the controller in {workdir}")
    t0 = time.monotonic()
    stack = LocalStack(workdir, layout)
    stack.check_ports()
    with stack:
        sentinels = [str(a) for a in stack.sentinel_addrs]
        ctl = ControllerDaemon(sentinels, [str(stack.haproxy_socket)],
                               workdir / "controller" / "controller.log")
        try:
            ctl.start()
            ctl.wait_in_sync(layout.groups)
            say(f"ready in {time.monotonic() - t0:.1f} s")
            say(f"processes: {' '.join(str(p) for p in [*stack.pids(), ctl.pid] if p)}")
            print_map(stack, ctl)
            if failover:
                failover_demo(stack, ctl, group)
            if keep:
                keep_running(stack)
        finally:
            ctl.stop()
    say("stopped: every process the demo started is gone")


def print_map(stack: LocalStack, ctl: ControllerDaemon) -> None:
    state = stack.haproxy_state()

    def routed(backend: str, backup: bool) -> str:
        servers = state.backends.get(backend, {}).values()
        names = [stack.node_named(f"{s.addr}:{s.port}") for s in servers
                 if s.routable and s.backup == backup]
        return ", ".join(f"{n} {stack.nodes[n].addr}" for n in names)

    say("\nport map (HAProxy on 127.0.0.1; where each port leads right now):")
    for g in stack.layout.groups:
        w = routed(stack.write_backend(g), backup=False)
        r = routed(stack.read_backend(g), backup=False)
        fb = routed(stack.read_backend(g), backup=True)
        say(f"  {g}  write :{stack.write_port(g)} -> {w or 'nothing'}")
        say(f"  {' ' * len(g)}  read  :{stack.read_port(g)} -> {r or 'nothing'} (roundrobin)"
            + (f"; if none is up: {fb}" if fb else ""))
    say(f"  stats page      http://127.0.0.1:{stack.layout.stats_port}/")
    say(f"  sentinels       {', '.join(str(a) for a in stack.sentinel_addrs)}")
    say(f"  haproxy socket  {stack.haproxy_socket}")
    say(f"  controller      pid {ctl.pid}, log {ctl.log_path}")


def failover_demo(stack: LocalStack, ctl: ControllerDaemon, group: str) -> None:
    old_name = _master_name(stack, group)
    say(f"\nfailover of {group}: writing through :{stack.write_port(group)} and reading through "
        f":{stack.read_port(group)}, then SIGKILL of its master {old_name}")
    spec = DrillSpec(
        sentinels=list(stack.sentinel_addrs),
        write=stack.write_frontend(group), read=stack.read_frontend(group),
        master=group, method="kill", haproxy_socket=str(stack.haproxy_socket),
        backends=(stack.write_backend(group), stack.read_backend(group)), setup="controller",
        writers=1, interval_s=0.005, prefix="demo",
    )
    returned: dict[str, Any] = {}

    def after(run: DrillRun) -> None:
        old_master_returns(stack, run, old_name, returned)

    rec = run_drill(spec, StackActions(stack), after=after,
                    progress=lambda m: say(f"  .. {m}"))
    marks = ctl.marks(rec.fault_t - 0.5, rec.end_t)
    rec = Recording(**{**rec.__dict__, "marks": tuple(sorted((*rec.marks, *marks),
                                                             key=lambda m: m.t))})
    print_failover(stack, rec, returned)


def _master_name(stack: LocalStack, group: str) -> str:
    addr = stack.master_addr(0, group)
    node = stack.node_at(addr) if addr else None
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
    addr = str(node.addr)
    say(f"  .. restarting the old master {name} with its original config (it comes back as a "
        "master)")
    stack.start_node(name)
    t_start = time.time()
    out["restart_t"] = t_start
    backend = stack.write_backend(node.group)
    states: list[tuple[float, str]] = []
    last = ""

    def converted(m: Mark) -> bool:
        return event_is_for(m, node.group) and addr in m.text

    def sample_until_converted() -> Mark | None:
        nonlocal last
        try:
            now = ", ".join(stack.routable().get(backend, [])) or "nothing"
        except HAProxyError as e:
            now = f"? ({e})"
        if now != last:
            states.append((time.time(), now))
            last = now
        return next((m for m in run.recorder.snapshot() if m.kind == "+convert-to-slave"
                     and m.t >= t_start and converted(m)), None)

    mark: Mark | None = None
    with contextlib.suppress(WaitTimeout):
        mark = wait_until(sample_until_converted, 30.0, "+convert-to-slave of the old master",
                          interval_s=0.1)
    out["convert_t"] = mark.t if mark else None
    out["states"] = states
    out["role_after"] = stack.role(name)


def print_failover(stack: LocalStack, rec: Recording, returned: dict[str, Any]) -> None:
    r = summarize(rec)
    say("\ntimeline (ms since SIGKILL of the master):")
    say(format_timeline(timeline(rec)))

    def nm(addr: str | None) -> str:
        if addr is None:
            return "(failed)"
        node = stack.node_at(addr)
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
    say("\nreads through the read port (where each read went, ms since the kill):")
    for reader in sorted({s.reader for s in rec.reads}):
        samples = [s for s in rec.reads if s.reader == reader]
        kind = "new connection per read" if reader % 2 else "held connection"
        ok = sum(1 for s in samples if s.ok and s.t >= rec.fault_t)
        bad = sum(1 for s in samples if not s.ok and s.t >= rec.fault_t)
        say(f"  reader {reader} ({kind}): {ok} ok, {bad} failed after the kill")
        for node, t_from, t_to, n in read_route(samples, rec.fault_t):
            say(f"    {t_from:+10.1f} .. {t_to:+10.1f} ms  {n:5d} reads  {nm(node)}")
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


def read_route(
    samples: Sequence[ReadSample], fault_t: float
) -> list[tuple[str | None, float, float, int]]:
    """Consecutive reads answered by the same node (None: failed), as (node, first ms, last
    ms, count) relative to the fault, from one second before it."""
    out: list[tuple[str | None, float, float, int]] = []
    for s in samples:
        if s.t < fault_t - 1.0:
            continue
        node = s.node if s.ok else None
        ms = (s.t - fault_t) * 1000
        if out and out[-1][0] == node:
            out[-1] = (node, out[-1][1], ms, out[-1][3] + 1)
        else:
            out.append((node, ms, ms, 1))
    return out


def keep_running(stack: LocalStack) -> None:
    g = stack.layout.groups[0]
    say("\nthe stack keeps running; try:")
    say(f"  redis-cli -p {stack.write_port(g)} set foo bar")
    say(f"  redis-cli -p {stack.read_port(g)} get foo")
    say(f"  redis-cli -h {stack.sentinel_addrs[0].host} -p {stack.sentinel_addrs[0].port} "
        f"sentinel get-master-addr-by-name {g}")
    sentinels = ",".join(str(a) for a in stack.sentinel_addrs)
    say(f"  sentinel-haproxy status --sentinel {sentinels} --haproxy-socket "
        f"{stack.haproxy_socket}")
    say(f"  sentinel-haproxy drill --sentinel {sentinels} --write 127.0.0.1:{stack.write_port(g)}"
        f" --read 127.0.0.1:{stack.read_port(g)} --master {g} --method failover --yes")
    say("Ctrl-C stops everything.")
    signal.pause()  # until Ctrl-C or SIGTERM: the user asked for --keep
