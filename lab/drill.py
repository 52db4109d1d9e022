"""A measured failover against any running Sentinel + HAProxy stack (`sentinel-haproxy drill`).

It writes through the HAProxy write frontend (SET with increasing counters, every ack stamped
with the Redis node that gave it), reads through the read frontend, subscribes to every
Sentinel, injects one fault (kill / pause / failover / hold / replica-kill, or a `Fault` given
by the caller, such as lab.partition's network partitions, healed after `pause_s`), waits until
writes land on the new master, then reads every acknowledged key back from the final master. The
numbers come from lab.measure; the command line is lab.cli.
Must not do anything destructive unless asked (lab.cli prints the plan without --yes), and
must leave the stack as it found it except for the fault it was asked for and its own keys.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from controller.model import Address
from lab import resp
from lab.measure import Recording, first_mark
from lab.probes import (
    EventRecorder,
    HAProxyWatcher,
    Mark,
    ReaderProcess,
    Writer,
    current_master,
    read_back,
    replica_entries,
)
from lab.resp import RespError
from lab.wait import WaitTimeout, wait_until

METHODS = ("kill", "pause", "failover", "hold", "replica-kill")


class DrillError(RuntimeError):
    """The drill could not run or could not finish (the message says what to check)."""


class Fault(Protocol):
    """A fault that is not a signal to one node, e.g. a network partition (lab.partition).

    `inject` is called at the drill's fault time, `heal` `DrillSpec.pause_s` later (and, if
    the drill ends first, when it ends); each returns the text of its timeline mark.
    """

    def inject(self, run: DrillRun) -> str: ...
    def heal(self) -> str: ...


class Actions(Protocol):
    """How to hurt a node; a local stack does it by its own PIDs, others by given PIDs."""

    def kill(self, addr: str) -> None: ...
    def pause(self, addr: str) -> None: ...
    def resume(self, addr: str) -> None: ...
    def restart(self, addr: str) -> bool: ...  # False: cannot (do it yourself)
    def describe(self, verb: str, addr: str) -> str: ...


def _is_loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("::1", "localhost")


class PidActions:
    """Signals Redis processes by PID: from `--pid-of ADDR=PID`, else, for a node on this
    machine's loopback, from its own `INFO server` process_id."""

    def __init__(self, pid_of: Mapping[str, int]) -> None:
        self.pid_of = dict(pid_of)

    def pid(self, addr: str) -> int:
        if addr in self.pid_of:
            return self.pid_of[addr]
        node = Address.parse(addr, "redis node")
        if not _is_loopback(node.host):
            raise DrillError(
                f"{addr} is not on this machine's loopback: give its PID with --pid-of {addr}=PID "
                "(or use --method failover)"
            )
        try:
            info = resp.info_fields(resp.command(node, "INFO", "server"))
        except (OSError, RespError) as e:
            raise DrillError(f"cannot ask {addr} for its process id: {e}") from None
        if not info.get("process_id", "").isdigit():
            raise DrillError(f"{addr}: no process_id in INFO server; use --pid-of")
        pid = int(info["process_id"])
        self.pid_of[addr] = pid
        return pid

    def kill(self, addr: str) -> None:
        os.kill(self.pid(addr), signal.SIGKILL)

    def pause(self, addr: str) -> None:
        os.kill(self.pid(addr), signal.SIGSTOP)

    def resume(self, addr: str) -> None:
        os.kill(self.pid(addr), signal.SIGCONT)

    def restart(self, addr: str) -> bool:
        return False

    def describe(self, verb: str, addr: str) -> str:
        try:
            pid: int | str = self.pid(addr)
        except DrillError as e:
            pid = f"? ({e})"
        return f"{verb} redis process {pid} ({addr})"


@dataclass
class DrillSpec:
    sentinels: list[Address]
    write: Address
    master: str
    method: str = "kill"
    read: Address | None = None
    pause_s: float = 5.0  # pause: SIGSTOP length; replica-kill: down time before restart
    duration_s: float = 30.0  # bound on waiting for writes on the new master
    warmup_s: float = 1.0
    settle_s: float = 1.0
    interval_s: float = 0.002
    write_timeout_s: float = 1.0
    writers: int = 2  # writer 0 persistent, writer 1 reconnects per write, ...
    readers: int = 2  # same pattern
    haproxy_socket: str | None = None
    backends: tuple[str, ...] = ()  # watched on haproxy_socket: the group's write, read backends
    setup: str = ""
    prefix: str = ""


@dataclass
class DrillRun:
    """Live state of a running drill, handed to the `after` hook."""

    spec: DrillSpec
    recorder: EventRecorder
    old_master: str
    fault_t: float = 0.0
    new_master: str | None = None
    extra_marks: list[Mark] = field(default_factory=list)
    heal_t: float | None = None  # when a `Fault` was healed

    def mark(self, kind: str, text: str) -> None:
        self.extra_marks.append(Mark(time.time(), kind, "drill", text))

    def wait_event(self, kind: str, predicate: Callable[[Mark], bool], timeout_s: float,
                   after: float) -> Mark | None:
        """The first `kind` event at or after `after` that `predicate` accepts; None when none
        came within `timeout_s`."""

        def found() -> Mark | None:
            return next((m for m in self.recorder.snapshot()
                         if m.kind == kind and m.t >= after and predicate(m)), None)

        try:
            return wait_until(found, timeout_s, f"Sentinel event {kind}")
        except WaitTimeout:
            return None


def sentinel_failover(spec: DrillSpec) -> None:
    """`SENTINEL FAILOVER <master>` on the first Sentinel that accepts it."""
    errors = []
    for s in spec.sentinels:
        try:
            if resp.command(s, "SENTINEL", "FAILOVER", spec.master) == "OK":
                return
        except (OSError, RespError) as e:
            errors.append(f"{s}: {e}")
    raise DrillError("no sentinel accepted SENTINEL FAILOVER: " + "; ".join(errors))


def switch_announced(run: DrillRun) -> bool:
    """A Sentinel published `+switch-master` for the drill's master since the fault (when a
    held failover resumes the old master)."""
    return first_mark(run.recorder.snapshot(), "+switch-master", run.spec.master,
                      run.fault_t) is not None


def pick_replica(spec: DrillSpec, master: str) -> str:
    """A replica of `master` that a Sentinel sees up."""
    for d in replica_entries(spec.sentinels, spec.master):
        if "s_down" not in d.get("flags", "") and "disconnected" not in d.get("flags", ""):
            return f"{d.get('ip')}:{d.get('port')}"
    raise DrillError(f"no healthy replica of {spec.master} ({master}) known to the sentinels")


def replicas_of(spec: DrillSpec) -> list[str]:
    """Replica addresses the Sentinels list for the group (up or not)."""
    addrs = (f"{d.get('ip')}:{d.get('port')}" for d in replica_entries(spec.sentinels,
                                                                         spec.master))
    return list(dict.fromkeys(addrs))


def replica_in_sync(addr: str, master: str) -> bool:
    """The node at `addr` says it replicates from `master` with its link up, no sync running."""
    try:
        fields = resp.info_fields(resp.command(Address.parse(addr), "INFO", "replication"))
    except (OSError, RespError, ValueError):
        return False
    return (
        fields.get("role") == "slave"
        and f"{fields.get('master_host')}:{fields.get('master_port')}" == master
        and fields.get("master_link_status") == "up"
        and fields.get("master_sync_in_progress") == "0"
    )


def wait_replica_in_sync(spec: DrillSpec, master: str, timeout_s: float = 30.0) -> str:
    """A replica of `master` in sync (bounded wait): a failover drill only makes sense from a
    healthy group; right after another failover the old master may still be syncing."""

    def in_sync() -> str | None:
        return next((a for a in replicas_of(spec) if a != master and replica_in_sync(a, master)),
                    None)

    try:
        return wait_until(in_sync, timeout_s, f"a replica of {spec.master} ({master}) in sync",
                          interval_s=0.1)
    except WaitTimeout:
        raise DrillError(f"no replica of {spec.master} ({master}) in sync within "
                         f"{timeout_s:.0f} s: a failover now would fail or lose data") from None


def plan_text(spec: DrillSpec, actions: Actions, old: str) -> list[str]:
    """What the drill would do, step by step (shown without --yes)."""
    steps = [
        f"write SET {spec.prefix or 'drill:<id>'}:<writer>:<n> through {spec.write} "
        f"with {spec.writers} writer(s), every {spec.interval_s * 1000:.0f} ms",
    ]
    if spec.read:
        steps.append(f"read GET through {spec.read}")
    steps.append(f"subscribe to {', '.join(str(s) for s in spec.sentinels)}")
    if spec.method == "kill":
        steps.append(actions.describe("SIGKILL", old) + f": the master of {spec.master}")
    elif spec.method == "pause":
        steps.append(actions.describe("SIGSTOP", old) + f" for {spec.pause_s} s, then SIGCONT")
    elif spec.method == "hold":
        steps.append(actions.describe("SIGSTOP", old) + f", SENTINEL FAILOVER {spec.master}, "
                     "SIGCONT after the first +switch-master")
    elif spec.method == "failover":
        steps.append(f"SENTINEL FAILOVER {spec.master} on the first sentinel that accepts")
    else:
        steps.append(f"SIGKILL a replica of {spec.master} (restart it yourself afterwards)")
    steps.append(f"wait up to {spec.duration_s} s for writes on the new master, then read back "
                 "every acknowledged key from it")
    return steps


def run_drill(
    spec: DrillSpec,
    actions: Actions,
    after: Callable[[DrillRun], None] | None = None,
    progress: Callable[[str], None] | None = None,
    fault: Fault | None = None,
) -> Recording:
    """Run one drill and return what it recorded (see the module doc).

    With a `fault`, it replaces the method's action (`spec.method` is then only its label): it
    is injected at the fault time and healed `spec.pause_s` later, and the drill waits until
    writes are acked by the master the Sentinels name after the heal (a new one or the same).
    """
    say = progress or (lambda _msg: None)
    prefix = spec.prefix or f"drill:{uuid.uuid4().hex[:8]}"
    old = current_master(spec.sentinels, spec.master)
    if old is None:
        raise DrillError(f"no majority of {len(spec.sentinels)} sentinel(s) names a master for "
                         f"{spec.master!r}")
    if fault is not None or spec.method != "replica-kill":
        wait_replica_in_sync(spec, old)
    recorder = EventRecorder(spec.sentinels)
    if not recorder.start():
        recorder.stop()
        raise DrillError("could not subscribe to every sentinel within 5 s")
    run = DrillRun(spec, recorder, old)
    watcher = None
    if spec.haproxy_socket:
        watcher = HAProxyWatcher(spec.haproxy_socket, spec.backends)
        watcher.start()
    stop = threading.Event()
    writers = [
        Writer(spec.write, prefix, i, stop, spec.interval_s, spec.write_timeout_s,
               reconnect_each=i % 2 == 1)
        for i in range(spec.writers)
    ]
    readers = [
        ReaderProcess(spec.read, f"{prefix}:probe", stop, reconnect_each=i % 2 == 1,
                      reader_id=i)
        for i in range(spec.readers)
    ] if spec.read else []
    threads: list[threading.Thread] = [*writers, *readers]
    for t in threads:
        t.start()
    paused: str | None = None
    unhealed: Fault | None = None
    target = old
    try:
        def acked_by_old() -> bool:
            return any(w.ok and w.node == old for wr in writers for w in wr.samples[-50:])

        try:
            wait_until(acked_by_old, 5.0, "a write acked by the master")
        except WaitTimeout:
            raise DrillError(f"writes through {spec.write} are not acked by the master "
                             f"{old} before the fault: is HAProxy routing to it?") from None
        for rd in readers:
            if not rd.ready.wait(ReaderProcess.START_S) or rd.error:
                raise DrillError(f"reader {rd.reader_id}: {rd.error or 'did not start'}")
        time.sleep(spec.warmup_s)
        if fault is None and spec.method == "replica-kill":
            target = pick_replica(spec, old)
        run.fault_t = time.time()
        say(f"fault: {spec.method} {target}")
        if fault is not None:
            unhealed = fault
            run.mark("fault", fault.inject(run))
        elif spec.method == "kill":
            actions.kill(target)
            run.mark("fault", f"SIGKILL master {target}")
        elif spec.method in ("pause", "hold"):
            actions.pause(target)
            paused = target
            run.mark("fault", f"SIGSTOP master {target}")
            if spec.method == "hold":
                sentinel_failover(spec)
                run.mark("drill", f"SENTINEL FAILOVER {spec.master}")
        elif spec.method == "failover":
            sentinel_failover(spec)
            run.mark("fault", f"SENTINEL FAILOVER {spec.master}")
        elif spec.method == "replica-kill":
            actions.kill(target)
            run.mark("fault", f"SIGKILL replica {target}")
        else:
            raise DrillError(f"unknown method {spec.method!r}")
        if fault is not None:
            _fault_phase(spec, fault, run, writers, say)
            unhealed = None if run.heal_t is not None else fault
        elif spec.method == "replica-kill":
            _replica_phase(spec, actions, run, readers, target, say)
        else:
            paused = _failover_phase(spec, actions, run, writers, paused, say)
        if after is not None:
            after(run)
        time.sleep(spec.settle_s)
    finally:
        stop.set()
        if paused is not None:
            actions.resume(paused)
        if unhealed is not None:
            run.mark("drill", unhealed.heal())
        for t in threads:
            t.join(max(5.0, spec.write_timeout_s + 1))
        recorder.stop()
        if watcher is not None:
            watcher.stop()
    end_t = time.time()
    broken = [f"reader {rd.reader_id}: {rd.error}" for rd in readers if rd.error]
    if broken:
        raise DrillError("; ".join(broken))
    final = current_master(spec.sentinels, spec.master)
    writes = tuple(sorted((w for wr in writers for w in wr.samples), key=lambda w: w.t))
    readback: dict[str, str | None] = {}
    if final is not None:
        keys = [w.key for w in writes if w.ok]
        try:
            readback = read_back(Address.parse(final), keys)
        except (OSError, RespError) as e:
            raise DrillError(f"cannot read the acknowledged keys back from {final}: {e}") from None
    marks = [*recorder.snapshot(), *run.extra_marks, *(watcher.marks if watcher else [])]
    return Recording(
        master=spec.master, method=spec.method, fault_t=run.fault_t, old_master=old,
        new_master=final, writes=writes,
        reads=tuple(sorted((r for rd in readers for r in rd.samples), key=lambda r: r.t)),
        marks=tuple(sorted(marks, key=lambda m: m.t)), readback=readback, setup=spec.setup,
        target=target, end_t=end_t, heal_t=run.heal_t,
    )


def _failover_phase(
    spec: DrillSpec, actions: Actions, run: DrillRun, writers: Sequence[Writer],
    paused: str | None, say: Callable[[str], None],
) -> str | None:
    """Wait (bounded) until a write is acked by a new master and a paused node is resumed
    (on time: after `pause_s`, or for `hold` after the first +switch-master)."""
    deadline = time.monotonic() + spec.duration_s
    next_poll = 0.0
    seen = dict.fromkeys(range(len(writers)), 0)
    acked_new = False
    while time.monotonic() < deadline:
        now = time.time()
        if paused is not None:
            resume = False
            if spec.method == "pause" and now >= run.fault_t + spec.pause_s:
                resume = True
            if spec.method == "hold" and switch_announced(run):
                resume = True
            if resume:
                actions.resume(paused)
                run.mark("drill", f"SIGCONT {paused}")
                say(f"resumed {paused}")
                paused = None
        if time.monotonic() >= next_poll:
            next_poll = time.monotonic() + 0.05
            m = current_master(spec.sentinels, spec.master)
            if m is not None and m != run.old_master:
                run.new_master = m
        if run.new_master is not None and not acked_new:
            for i, wr in enumerate(writers):
                samples = wr.samples[seen[i]:]
                seen[i] += len(samples)
                if any(w.ok and w.node == run.new_master for w in samples):
                    say(f"writes acked by the new master {run.new_master}")
                    acked_new = True
                    break
        if acked_new and paused is None:
            return None
        time.sleep(0.01)
    say(f"no write acked by a new master within {spec.duration_s} s")
    return paused


def _fault_phase(
    spec: DrillSpec, fault: Fault, run: DrillRun, writers: Sequence[Writer],
    say: Callable[[str], None],
) -> None:
    """Heal `fault` `pause_s` after it was injected, then wait (bounded by `duration_s` from
    the fault) until a write sent after the heal is acked by the master the Sentinel majority
    names (`run.new_master` is set when that is another node than the old master)."""
    deadline = time.monotonic() + spec.duration_s
    next_poll = 0.0
    master: str | None = None
    while time.monotonic() < deadline:
        if run.heal_t is None and time.time() >= run.fault_t + spec.pause_s:
            run.mark("drill", fault.heal())
            run.heal_t = time.time()
            say("healed")
        if time.monotonic() >= next_poll:
            next_poll = time.monotonic() + 0.05
            master = current_master(spec.sentinels, spec.master) or master
            if master is not None and master != run.old_master:
                run.new_master = master
        if run.heal_t is not None and master is not None and any(
                w.ok and w.node == master and w.sent >= run.heal_t
                for wr in writers for w in wr.samples[-50:]):
            say(f"writes acked by {master} after the heal")
            return
        time.sleep(0.01)
    say(f"no write acked by the Sentinels' master after the heal within {spec.duration_s} s")


def _replica_phase(
    spec: DrillSpec, actions: Actions, run: DrillRun, readers: Sequence[ReaderProcess], target: str,
    say: Callable[[str], None],
) -> None:
    time.sleep(spec.pause_s)
    if not actions.restart(target):
        say(f"{target} stays down: restart it yourself")
        return
    run.mark("drill", f"restarted replica {target}")
    say(f"restarted {target}")
    t0 = time.time()

    def reads_back() -> bool:
        return all(any(r.ok and r.t > t0 for r in rd.samples[-20:]) for rd in readers)

    try:
        wait_until(reads_back, spec.duration_s, "every reader to read again")
    except WaitTimeout:
        say(f"reads did not recover within {spec.duration_s} s")
