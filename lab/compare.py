"""`sentinel-haproxy drill --compare`: classic HAProxy vs the controller, side by side.

Starts two local stacks of one group each (lab.localstack) at the same time: one
whose HAProxy decides by itself with the classic role health check (haproxy/haproxy-classic.cfg,
no controller), one driven by the controller daemon (haproxy/haproxy.cfg). Each scenario runs
on both at once, with the same writers, readers and fault:
- kill:    SIGKILL of the master;
- return:  SIGKILL of the master, then the old master restarts with its own config (a master
           again until Sentinel converts it ~10 s later);
- hold:    a connection held through the failover: SIGSTOP of the master, SENTINEL FAILOVER,
           SIGCONT once Sentinel switched;
- replica: SIGKILL of the replica, restarted 3 s later (read errors);
- leader:  SIGKILL of the master, then of the Sentinel leading its failover;
- proxy:   SIGKILL of HAProxy (master and worker), started again 1 s later;
- reload:  master-worker reload of HAProxy (SIGUSR2 to its master);
- reload-hold: a reload, then `hold`: the held writer's session is on the old worker.
Every setup's HAProxy runs in master-worker mode (`-W`, with a master CLI, `-S`), as the
official image runs it.
Between scenarios both stacks are brought back to "two nodes, one master, one linked replica,
HAProxy routing accordingly" (not measured). `--repeat N` gives the median and the worst.
lab.partition runs its network partitions on the same stacks (`started`, `all_at_once`,
`restore`).
Must stop both stacks and the controller on exit, Ctrl-C or error.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from controller.haproxy import HAProxyError
from controller.model import Address
from lab import resp
from lab.daemon import ControllerDaemon
from lab.drill import (
    DrillError,
    DrillRun,
    DrillSpec,
    Fault,
    run_drill,
    sentinel_failover,
    switch_announced,
)
from lab.localstack import (
    HAPROXY_CLASSIC_CONFIG,
    HAPROXY_CONFIG,
    HAPROXY_REDIS_HA_CONFIG,
    Layout,
    LocalStack,
    StackActions,
)
from lab.measure import METRICS, Recording, aggregate, fmt_num
from lab.probes import Mark, current_master, event_is_for
from lab.resp import RespError
from lab.wait import WaitTimeout, wait_until

GROUP = "redis1"
SCENARIOS: dict[str, str] = {
    "kill": "SIGKILL of the master",
    "return": "SIGKILL of the master, old master restarted with its own config",
    "hold": "connection held through the failover (SIGSTOP, SENTINEL FAILOVER, SIGCONT)",
    "replica": "SIGKILL of the replica, restarted 3 s later",
    "leader": "SIGKILL of the master, then of the Sentinel leading the failover as it sends "
              "SLAVEOF NO ONE (double fault; that Sentinel restarted 8 s after the first kill)",
    "proxy": "SIGKILL of HAProxy, started again from its config 1 s later (a container "
             "restart: every runtime state lost)",
    "reload": "master-worker reload of HAProxy (SIGUSR2): a new worker starts from the config; "
              "established connections stay on the old one",
    "reload-hold": "HAProxy reloaded, then the held-connection failover (SIGSTOP, SENTINEL "
                   "FAILOVER, SIGCONT): the held writer is on the old worker",
}
#: Setups, in table order: the two HAProxy-only peers, then this project. classic: role health
#: checks (haproxy/haproxy-classic.cfg); redis-ha: the redis-ha Helm chart's role checks plus
#: Sentinel votes (haproxy/haproxy-redis-ha.cfg); controller: the shipped haproxy.cfg driven
#: by the controller daemon.
SETUPS = ("classic", "redis-ha", "controller")
CONFIGS = {"classic": HAPROXY_CLASSIC_CONFIG, "redis-ha": HAPROXY_REDIS_HA_CONFIG,
           "controller": HAPROXY_CONFIG}
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass
class Setup:
    name: str
    stack: LocalStack
    ctl: ControllerDaemon | None = None

    def actions(self) -> CompareActions:
        return CompareActions(self.stack)


class CompareActions(StackActions):
    """A restarted node comes back as a replica of the current master (as a replica whose
    config Sentinel rewrote would); `restart_as_master` brings one back as a master (as an old
    master restarted with its own config)."""

    def restart(self, addr: str) -> bool:
        name = self.stack.node_named(addr)
        self.stack.start_node(name)
        master = current_master(self.stack.sentinel_addrs, GROUP)
        if master is not None and master != addr:
            m = Address.parse(master)
            self.stack.redis_command(name, "REPLICAOF", m.host, m.port)
        return True

    def restart_as_master(self, addr: str) -> None:
        name = self.stack.node_named(addr)
        self.stack.start_node(name)
        if self.stack.role(name) != "master":
            self.stack.redis_command(name, "REPLICAOF", "NO", "ONE")


def layouts(setups: Sequence[str] = SETUPS, replicas: int = 1,
            **overrides: object) -> dict[str, Layout]:
    """One-group layouts on distinct loopback addresses and free ports, one per setup
    (`overrides`: other Layout fields, the same for every setup). HAProxy runs in master-worker
    mode, as a container runs it (and so that it can be reloaded)."""
    fields: dict[str, object] = {"haproxy_master_worker": True, **overrides}
    return {
        name: Layout.for_tests(groups=(GROUP,), haproxy_config=CONFIGS[name], replicas=replicas,
                               first_node_ip=2 + 40 * i, first_sentinel_ip=30 + 40 * i,
                               **fields)
        for i, name in enumerate(setups)
    }


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- scenarios


def spec_for(setup: Setup, scenario: str) -> DrillSpec:
    stack = setup.stack
    base = DrillSpec(
        sentinels=list(stack.sentinel_addrs),
        write=stack.write_frontend(GROUP),
        read=stack.read_frontend(GROUP),
        master=GROUP,
        haproxy_socket=str(stack.haproxy_socket),
        backends=(stack.write_backend(GROUP), stack.read_backend(GROUP)),
        setup=setup.name, writers=2, interval_s=0.005, duration_s=30.0,
        prefix=f"cmp:{setup.name}:{scenario}:{int(time.time() * 1000)}",
    )
    if scenario in ("kill", "return"):
        return replace(base, method="kill")
    if scenario in ("hold", "reload-hold"):
        return replace(base, method="hold", write_timeout_s=15.0)
    if scenario == "replica":
        return replace(base, method="replica-kill", pause_s=3.0)
    if scenario == "leader":  # Sentinel re-elects only after 2 x failover-timeout (10 s)
        return replace(base, method="kill", pause_s=8.0, duration_s=90.0)
    if scenario == "proxy":
        return replace(base, method="proxy-restart", pause_s=1.0)
    if scenario == "reload":
        return replace(base, method="proxy-reload", pause_s=1.0)
    raise ValueError(f"unknown scenario {scenario!r}")


def after_for(setup: Setup, scenario: str) -> Callable[[DrillRun], None] | None:
    if scenario == "return":
        return lambda run: _old_master_returns(setup, run)
    if scenario in ("hold", "reload-hold"):
        return lambda run: wait_conversion(run, run.old_master, time.time(), 20.0, 3.0)
    return None


def _old_master_returns(setup: Setup, run: DrillRun) -> None:
    time.sleep(0.5)
    setup.actions().restart_as_master(run.old_master)
    t = time.time()
    run.mark("drill", f"old master {run.old_master} restarted (role master)")
    wait_conversion(run, run.old_master, t, 25.0, 5.0)


def wait_conversion(run: DrillRun, addr: str, since: float, timeout_s: float,
                    tail_s: float) -> None:
    """Until a Sentinel converts `addr` to a replica (bounded), then `tail_s` more."""

    def is_it(m: Mark) -> bool:
        return event_is_for(m, GROUP) and addr in m.text

    run.wait_event("+convert-to-slave", is_it, timeout_s, since)
    time.sleep(tail_s)


def run_scenario(setup: Setup, scenario: str) -> Recording:
    fault: Fault | None = None
    if scenario == "leader":
        fault = LeaderLoss(setup)
    elif scenario == "proxy":
        fault = ProxyRestart(setup)
    elif scenario == "reload":
        fault = ProxyReload(setup)
    elif scenario == "reload-hold":
        fault = ReloadHold(setup)
    return run_measured(setup, spec_for(setup, scenario), after_for(setup, scenario), fault)


class LeaderLoss:
    """A double fault (a `drill.Fault`): SIGKILL the master, then the Sentinel that leads its
    failover the moment it sends SLAVEOF NO ONE to the replica it chose (it dies before it
    can tell the others); `heal` restarts that Sentinel."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.killed: int | None = None
        self._thread: threading.Thread | None = None

    def inject(self, run: DrillRun) -> str:
        old = run.old_master
        self.setup.actions().kill(old)

        def kill_leader() -> None:
            m = run.wait_event("+failover-state-send-slaveof-noone",
                               lambda m: event_is_for(m, GROUP), 20.0, run.fault_t)
            addrs = [str(a) for a in self.setup.stack.sentinel_addrs]
            if m is None or m.source not in addrs:
                return
            self.killed = addrs.index(m.source)
            self.setup.stack.kill_sentinel(self.killed)
            run.mark("drill", f"SIGKILL failover leader sentinel {m.source}")

        self._thread = threading.Thread(target=kill_leader, name="kill-leader", daemon=True)
        self._thread.start()
        return f"SIGKILL master {old}"

    def heal(self) -> str:
        if self._thread is not None:
            self._thread.join(25.0)
        if self.killed is None:
            return "no failover leader seen within 20 s: no Sentinel killed"
        self.setup.stack.start_sentinel(self.killed)
        return f"sentinel #{self.killed} restarted"


class ProxyRestart:
    """HAProxy crashes (SIGKILL to its process group: master and workers) and is started again
    from its config when healed, as a restarted container is: its server states and maps are
    the config's again (a `drill.Fault`; no Redis node is touched)."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup

    def inject(self, run: DrillRun) -> str:
        # Nothing slow before the kill: a write acked between the fault time and the kill
        # counts as the end of the outage (measured: listing the workers from /proc first
        # took the write outage from ~1.1 s to 6 ms).
        pid = self.setup.stack.haproxy_pid
        self.setup.stack.kill_haproxy()
        return f"SIGKILL HAProxy (process group {pid}: master and workers)"

    def heal(self) -> str:
        self.setup.stack.start_haproxy()
        return f"HAProxy started again (pid {self.setup.stack.haproxy_pid})"


class ProxyReload:
    """A master-worker reload of HAProxy (a `drill.Fault`): SIGUSR2 to its master by PID, as
    `docker kill -s USR2` does; a new worker starts from the config and takes new connections,
    the old one keeps its established ones until they close.

    Nothing to heal, but `heal` waits (bounded) until the write frontend steadily gives fresh
    connections the master: the persistent writer, still on the old worker, acks at once and
    would end the drill before the new worker's gap is over (measured: a controller setup
    whose new worker refused writes for longer than the 1 s pause)."""

    STEADY_S = 0.5  # fresh connections on the master, none failing, for this long
    WAIT_S = 20.0  # within the drill's 30 s

    def __init__(self, setup: Setup) -> None:
        self.setup = setup

    def inject(self, run: DrillRun) -> str:
        master = self.setup.stack.haproxy_pid
        old, new = self.setup.stack.reload_haproxy()
        return f"SIGUSR2 HAProxy master (pid {master}): worker {old} -> {new}"

    def heal(self) -> str:
        start = time.time()
        since: list[float] = []  # start of the current run of fresh connections on the master

        def steady() -> bool:
            if not self._master_through_write():
                since.clear()
                return False
            if not since:
                since.append(time.time())
            return time.time() - since[0] >= self.STEADY_S

        try:
            wait_until(steady, self.WAIT_S, "fresh write connections on the master",
                       interval_s=0.01)
        except WaitTimeout:
            return (f"reloaded; fresh connections through the write frontend not steadily on "
                    f"the master within {self.WAIT_S:.0f} s")
        return (f"reloaded; fresh connections through the write frontend on the master, "
                f"{self.STEADY_S:g} s in a row, after {(since[0] - start) * 1000:.0f} ms of "
                "checking")

    def _master_through_write(self) -> bool:
        """One fresh connection through the write frontend reaches a node that says master."""
        stack = self.setup.stack
        try:
            reply = resp.command(stack.write_frontend(GROUP), "ROLE", timeout_s=0.5,
                                 password=stack.layout.redis_password or None)
        except (OSError, RespError):
            return False
        return isinstance(reply, list) and bool(reply) and reply[0] == "master"


class ReloadHold:
    """A master-worker reload of HAProxy, then the `hold` failover (a `drill.Fault`): SIGSTOP
    the master, SENTINEL FAILOVER, SIGCONT once a Sentinel announces the switch. The
    persistent writer connected before the reload, so the old worker keeps its session, which
    the admin socket no longer reaches; when the old master wakes up, not yet converted, it
    acknowledges whatever reaches it on that session (the writer's pending SET first).
    """

    SWITCH_WAIT_S = 20.0  # within the drill's 30 s

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.run: DrillRun | None = None

    def inject(self, run: DrillRun) -> str:
        self.run = run
        old, new = self.setup.stack.reload_haproxy()
        self.setup.actions().pause(run.old_master)
        sentinel_failover(run.spec)
        return (f"HAProxy reloaded (worker {old} -> {new}); SIGSTOP master {run.old_master}; "
                "SENTINEL FAILOVER")

    def heal(self) -> str:
        run = self.run
        assert run is not None, "heal before inject"
        try:
            wait_until(lambda: switch_announced(run), self.SWITCH_WAIT_S, "+switch-master",
                       interval_s=0.01)
            said = "after +switch-master"
        except WaitTimeout:
            said = f"no +switch-master within {self.SWITCH_WAIT_S:.0f} s"
        self.setup.actions().resume(run.old_master)
        return f"SIGCONT {run.old_master} ({said})"


def run_measured(setup: Setup, spec: DrillSpec, after: Callable[[DrillRun], None] | None = None,
                 fault: Fault | None = None) -> Recording:
    """One drill on `setup`, with the controller's actions (if it has one) in its marks."""
    rec = run_drill(spec, setup.actions(), after=after, fault=fault)
    if setup.ctl is not None:
        extra = setup.ctl.marks(rec.fault_t - 0.5, rec.end_t)
        rec = replace(rec, marks=tuple(sorted((*rec.marks, *extra), key=lambda m: m.t)))
    return rec


def restore(setup: Setup, timeout_s: float = 60.0) -> None:
    """Bring a stack back to: every node up, one master, the others its linked replicas, known
    healthy to every Sentinel, HAProxy routing writes to the master and reads to the replicas."""
    stack = setup.stack
    deadline = time.monotonic() + timeout_s

    def left() -> float:
        return max(0.0, deadline - time.monotonic())

    not_yet = (OSError, RespError, HAProxyError, ValueError, KeyError)
    master = wait_until(lambda: current_master(stack.sentinel_addrs, GROUP), left(),
                        f"{setup.name}: a Sentinel majority naming a master", not_yet=not_yet)
    m_node = stack.nodes[stack.node_named(master)]
    for name in stack.nodes:
        if stack.node_pid(name) is None:
            setup.actions().restart(str(stack.nodes[name].addr))
    replicas = sorted(n for n in stack.nodes if n != m_node.name)

    def healthy() -> bool:
        for replica in replicas:
            info = resp.info_fields(stack.redis_command(replica, "INFO", "replication"))
            if info.get("master_link_status") != "up" or info.get("master_host") != m_node.host:
                return False
        want = {str(stack.nodes[r].addr) for r in replicas}
        for i in range(len(stack.sentinel_addrs)):
            reply = stack.sentinel_command(i, "SENTINEL", "REPLICAS", GROUP)
            entries = [resp.field_pairs(e) for e in reply] if isinstance(reply, list) else []
            ok = {d.get("name") for d in entries if d.get("flags") == "slave"
                  and d.get("role-reported") == "slave" and d.get("master-link-status") == "ok"}
            if not want <= ok:
                return False
        now = stack.routable()
        readers = {n for n in now.get(stack.read_backend(GROUP), [])
                   if not n.endswith("-fallback")}
        return now.get(stack.write_backend(GROUP)) == [m_node.name] and readers == set(replicas)

    wait_until(healthy, left(), f"{setup.name}: {', '.join(replicas)} healthy replicas of "
               f"{m_node.name} and HAProxy routing accordingly", interval_s=0.1, not_yet=not_yet)


# --------------------------------------------------------------------------- running it all


@contextmanager
def started(
    workdir: Path, setups: Sequence[str] = SETUPS, replicas: int = 1,
    controller_args: Sequence[str] = (), **layout_overrides: object,
) -> Iterator[list[Setup]]:
    """One stack per setup (and the controller daemon for `controller`), started and restored
    to a healthy state; every process is stopped on exit (the Setups keep their daemon, whose
    `problems()` can be read afterwards)."""
    lays = layouts(setups, replicas, **layout_overrides)
    running: list[Setup] = []
    try:
        for name in setups:
            stack = LocalStack(workdir / name, lays[name])
            running.append(Setup(name, stack))
            stack.start()
            _say(f"started {name} stack in {workdir / name}")
            if name == "controller":
                ctl = ControllerDaemon([str(a) for a in stack.sentinel_addrs],
                                       [str(stack.haproxy_socket)],
                                       workdir / "controller" / "controller.log",
                                       controller_args)
                running[-1].ctl = ctl
                ctl.start()
                ctl.wait_in_sync((GROUP,))
        for s in running:
            restore(s)
        yield running
    finally:
        for s in reversed(running):
            if s.ctl is not None:
                s.ctl.stop()
            s.stack.stop()


def run_compare(
    workdir: Path, scenarios: Sequence[str], repeat: int,
    on_result: Callable[[str, int, dict[str, Recording]], None] | None = None,
    controller_args: Sequence[str] = (), setups: Sequence[str] = SETUPS, replicas: int = 1,
) -> dict[str, list[dict[str, Recording]]]:
    """Start one stack per setup, run every scenario `repeat` times on all at once, stop
    everything. Returns scenario -> one {setup: Recording} per repetition."""
    results: dict[str, list[dict[str, Recording]]] = {s: [] for s in scenarios}
    with started(workdir, setups, replicas, controller_args) as running:
        for i in range(repeat):
            for scenario in scenarios:
                _say(f"[{i + 1}/{repeat}] {scenario}: {SCENARIOS[scenario]}")
                recs = all_at_once(running, scenario)
                results[scenario].append(recs)
                if on_result is not None:
                    on_result(scenario, i, recs)
                for s in running:
                    restore(s)
    return results


def all_at_once(setups: Sequence[Setup], scenario: str,
                run_one: Callable[[Setup, str], Recording] = run_scenario,
                ) -> dict[str, Recording]:
    """`run_one(setup, scenario)` on every setup at once (one thread each), bounded."""
    out: dict[str, Recording] = {}
    errors: dict[str, BaseException] = {}

    def one(s: Setup) -> None:
        try:
            out[s.name] = run_one(s, scenario)
        except BaseException as e:  # reported below, in the caller's thread
            errors[s.name] = e

    threads = [threading.Thread(target=one, args=(s,), name=f"cmp-{s.name}") for s in setups]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    if errors:
        name, e = next(iter(errors.items()))
        raise DrillError(f"{scenario} on {name}: {e}") from e
    if len(out) != len(setups):
        raise DrillError(f"{scenario}: a drill did not finish within 180 s")
    return out


# --------------------------------------------------------------------------- output


def table(scenario: str, reports: Mapping[str, Sequence[object]], title: str | None = None,
          metrics: Sequence[tuple[str, str]] = METRICS) -> str:
    """One row per metric (attributes, or keys of dict reports), one column per setup: median
    (worst); `*` marks the lowest median (every metric is "bigger is worse")."""
    setups = list(reports)
    n = len(next(iter(reports.values())))
    lines = [f"{scenario}: {title or SCENARIOS[scenario]}  ({n} run{'s' if n > 1 else ''}; "
             "median (worst); * = lowest)",
             f"  {'':<56}" + "".join(f"{s:>20}" for s in setups)]
    for key, label in metrics:
        meds: list[float | None] = []
        cells: list[str] = []
        for setup in setups:
            med, worst = aggregate([_metric(r, key) for r in reports[setup]])
            meds.append(med)
            cells.append(fmt_num(med, "-") if n == 1
                         else f"{fmt_num(med, '-')} ({fmt_num(worst, '-')})")
        present = [m for m in meds if m is not None]
        best = min(present) if present else None
        marked = [c + (" *" if m is not None and m == best and len(present) > 1 else "  ")
                  for c, m in zip(cells, meds, strict=True)]
        lines.append(f"  {label:<56}" + "".join(f"{c:>20}" for c in marked))
    return "\n".join(lines)


def _metric(report: object, key: str) -> float | None:
    value = report.get(key) if isinstance(report, Mapping) else getattr(report, key)
    return None if value is None else float(value)
