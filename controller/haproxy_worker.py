"""Keeps one HAProxy in line with the wanted state, in a thread of its own.

The loop decides per group what its backends should look like (`plan.BackendTarget`s) and
hands that to every HAProxy's worker with `want()`; it never waits for an HAProxy, and an
HAProxy never waits for another. A worker always works on the latest wanted state of each
group (a group wanted twice before the worker got to it is synced once), groups from
targeted passes first, then those from full passes in chunks (so that a full pass of 1,000
groups never holds a failover back for long).

One sync of some groups: read their backends (with `show info`, so that a restart is seen on
every exchange), plan, apply (write outs before ins) and read them back in one exchange, and
verify. A server whose admin state is not what this worker left it in was changed by someone
else: logged as a hand edit when it is put back.

When its HAProxy fails (timeout, refused socket) the worker keeps the wanted state, asks only
`show info`, with backoff up to `poll_interval_s`, until it answers (a hung HAProxy gets no
command that it could run late, when it wakes up), then syncs every group: its state may be
anything (restarted, hand-edited, a late command ran). It also asks `show info` every
`poll_interval_s` when idle, to see a reload, and pushes the write lease. A second thread, the
watch, holds one idle session open: its end (HAProxy died or stopped) wakes the worker to
probe at once, and so does the watch's first connect after HAProxy could not be reached (a
restart is seen a few ms after the new HAProxy listens). Each state read is kept for
HAProxy's server-state file (`haproxy_state_file`), which a third thread writes when a server
changed and a fourth watches for a starting HAProxy opening it: a restarted or reloaded
HAProxy starts from it, and a reload is seen at once. The sessions a reload's old worker keeps
to a server whose sessions a sync shut are shut too, through the master CLI (`OldWorkers`).
Must not decide anything, nor talk to anything but its HAProxy (through `HAProxyTarget`).
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from controller.counters import Counters
from controller.haproxy import AppliedAndRead, CommandResult, HAProxyError
from controller.haproxy_old_workers import OldWorkers
from controller.haproxy_state_file import FileOpens, ServerStateFile
from controller.model import AdminState, Command, HAProxyInfo, HAProxyState
from controller.plan import BackendTarget, Note, Plan, plan

log = structlog.get_logger("controller")

URGENT_MAX = 64  # groups of targeted passes synced in one exchange at most
CHUNK = 8  # groups of full passes per sync: a failover waits for one chunk at most
# A full pass hands its groups over two at a time (loop.FULL_CHUNK); the worker gathers them
# for up to this long into syncs of CHUNK (one HAProxy exchange, plan and read-back each),
# where syncing each pair would double a full pass's cost. A hinted group ends the wait.
GATHER_S = 0.004
FULL_READ_AT = 400  # backends: from this many on, read the whole state in one exchange
MIN_BACKOFF_S = 0.05
FRESH_FOR_S = 1.0  # a read ahead of a targeted sync is used only this soon after
# The watch: one idle session held open (`hold`), reopened this often; its end says at once
# that HAProxy stopped or died, where the probe every `poll_interval_s` would see it later.
WATCH_HOLD_S = 1.0
# While the watch cannot connect: try again this often, so that a restarted HAProxy is seen,
# probed and given its state a few ms after it listens (it routes nothing until then). A
# refused connect costs ~15 us: ~1 % of a core for WATCH_FAST_FOR_S, then WATCH_SLOW_S.
WATCH_RETRY_S = 0.002
WATCH_FAST_FOR_S = 5.0
WATCH_SLOW_S = 0.1
# The state file opened by another process: an HAProxy is starting (a reload shows nothing
# else until the new worker is asked). Its new worker answers ~15 ms later: ask `show info`
# this often, for up to this long, until the identity changes (a config check, `haproxy -c`,
# opens it too, and costs this much asking).
CATCH_EVERY_S = 0.002
CATCH_FOR_S = 1.0


class HAProxyTarget(Protocol):
    """What a worker needs from one HAProxy (`haproxy.HAProxyClient`); errors: HAProxyError."""

    target: str

    def info(self) -> HAProxyInfo: ...

    def state(self, backends: Sequence[str] | None = None) -> HAProxyState: ...

    def run(self, commands: Sequence[Command]) -> list[CommandResult]: ...

    def run_and_read(self, commands: Sequence[Command], backends: Sequence[str] | None
                     ) -> AppliedAndRead: ...

    def maps(self) -> list[str]: ...

    def hold(self, max_s: float, on_open: Callable[[], None] | None = None) -> bool: ...

    def release(self) -> None: ...

    def set_map(self, file: str, key: str, value: str) -> None: ...


class Hooks(Protocol):
    """What a worker tells the controller (called from the worker's thread)."""

    def timeline(self) -> dict[str, float]: ...  # t_ms of the failover timeline, if open

    def emit(self, kind: str, data: dict[str, object]) -> None: ...  # webhooks; never blocks

    def haproxy_changed(self, target: str) -> None: ...  # restarted, reloaded or back

    def applied(self) -> None: ...  # hinted groups synced (or this HAProxy is down): no wait


@dataclass(frozen=True)
class HAProxyOutcome:
    """One sync of one HAProxy."""

    target: str
    state: HAProxyState | None
    plan: Plan
    results: tuple[CommandResult, ...] = ()
    error: str = ""
    drift_after: int | None = 0  # None: the read-back failed, the drift is unknown


@dataclass
class _Dirty:
    since: float  # earliest hint the wanted state answers
    urgent: bool  # from a targeted pass


class HAProxyWorker:
    """One HAProxy's wanted state per group, and the thread that applies it."""

    def __init__(
        self,
        h: HAProxyTarget,
        counters: Counters,
        hooks: Hooks,
        poll_interval_s: float = 0.5,
        apply: bool = True,
        lease_map: str = "lease.map",
        write_lease: bool = True,
        state_file: str | None = None,
        old_workers: OldWorkers | None = None,
    ) -> None:
        self.h = h
        # A reload's old workers, through the master CLI: their sessions to the servers this
        # worker shuts sessions of are shut too (None: no master CLI)
        self.old_workers = old_workers
        self.target = h.target
        self.counters = counters
        self.hooks = hooks
        self.poll_interval_s = poll_interval_s
        self.apply = apply
        self.lease_map = lease_map
        self.write_lease = write_lease
        # HAProxy's server-state file, if it has one (None: not kept)
        self.state_file = None if state_file is None else ServerStateFile(state_file)
        self._state_file_error = ""  # the last failure to write it, logged once
        self._cond = threading.Condition()
        # Guarded by _cond: what the loop wants.
        self._wanted: dict[str, tuple[BackendTarget, ...]] = {}
        self._dirty: dict[str, _Dirty] = {}
        self._lease_value: str | None = None
        self._lease_due = False
        # A new HAProxy (first seen, restarted, back) gets its lease only once every group
        # handed over is synced: it may hold states older than the wanted ones (from before
        # this controller, or from its server-state file). A reload the probe has not seen
        # yet may get a renewal first: the new worker started from the file, which holds
        # what this worker applied and read back (a fence applied in the very instant of the
        # reload aside, until the probe sees it).
        self._sync_first = True
        self._prefetch: set[str] = set()  # backends to read ahead of a targeted sync
        self._stop = False
        # The worker's own (its thread, or the caller in inline mode).
        self.up = True
        self._identity: HAProxyInfo | None = None
        self._left: dict[tuple[str, str], AdminState] = {}  # admin states it left servers in
        self._lease_file: str | None = None
        self._lease_file_known = False
        self._notes: dict[str, set[Note]] = {}  # standing plan notes per group
        self._lease_refused = ""  # the last refusal of the lease map update, logged once
        self._drift: dict[str, int | None] = {}  # per group, after its last sync
        self._backoff = MIN_BACKOFF_S
        self._next_probe = 0.0
        self._thread: threading.Thread | None = None
        self._fresh: HAProxyState | None = None  # read ahead; used once, dropped on apply
        self._fresh_at = 0.0
        self._urgent_sync = False  # a sync of hinted groups is running (guarded by _cond)
        self._forgotten: set[str] = set()  # groups to forget in this thread (guarded by _cond)
        self._gather_until: float | None = None  # gathering a full pass's groups until
        self._helpers: list[threading.Thread] = []  # watch, and the state file's two
        self._file_due = threading.Event()  # the state file changed: the file thread writes it
        self._watch_stop = threading.Event()
        self._probe_asked = False  # the watch wants a probe now (guarded by _cond)

    # -- the loop's side -----------------------------------------------------------------
    def want(self, wanted: Mapping[str, tuple[BackendTarget, ...]],
             since: Mapping[str, float], urgent: bool) -> None:
        """The latest targets of these groups (empty: undecided, HAProxy keeps its state);
        `since`: per group, the hint it answers (latency counts from there)."""
        with self._cond:
            for group, ts in wanted.items():
                if not ts:
                    self._wanted.pop(group, None)
                    self._dirty.pop(group, None)
                    continue
                self._wanted[group] = ts
                self._mark(group, since[group], urgent)
            self._cond.notify_all()

    def forget(self, groups: Collection[str]) -> None:
        """These groups are no longer the controller's (no Sentinel monitors them): drop what
        is wanted for them now, and their drift and gauges in this worker's thread. Their
        backends in HAProxy are left as they are; a restart of this HAProxy no longer
        re-applies them."""
        with self._cond:
            for g in groups:
                self._wanted.pop(g, None)
                self._dirty.pop(g, None)
            self._forgotten |= set(groups)
            self._cond.notify_all()
        if self._thread is None:  # inline (the command line, tests): now
            with self._cond:
                forgotten, self._forgotten = self._forgotten, set()
            self._drop_forgotten(forgotten)

    def _drop_forgotten(self, groups: set[str]) -> None:
        """The worker thread's part of `forget`: drift, plan notes, gauges."""
        for g in groups:
            self._notes.pop(g, None)
            self._drift.pop(g, None)
            self.counters.write_servers.pop((self.target, g), None)
        self._drop_slot_gauges(groups)
        self._publish_drift()

    def _drop_slot_gauges(self, groups: Collection[str]) -> None:
        """This HAProxy's `nodes_without_slot` gauges of these groups."""
        slots = self.counters.nodes_without_slot
        for key in [k for k in list(slots) if k[0] == self.target and k[1] in groups]:
            del slots[key]

    def prefetch(self, groups: Sequence[str]) -> None:
        """A targeted pass about these groups has started: read their backends now, while
        the Sentinels are asked, so that the sync that follows plans from that read instead
        of reading again (it was taken after the hint; only this worker changes HAProxy)."""
        with self._cond:
            backends = {t.backend for g in groups for t in self._wanted.get(g, ())}
            if backends and self._thread is not None:
                self._prefetch = backends
                self._cond.notify_all()

    def set_lease(self, value_ms: str) -> None:
        """The lease to push into the lease map (at once when the worker has no thread)."""
        with self._cond:
            self._lease_value = value_ms
            self._lease_due = self._thread is not None
            self._cond.notify_all()
        if self._thread is None:
            self._push_lease(value_ms)

    @property
    def threaded(self) -> bool:
        """Runs in its own thread (the daemon), not inline (the command line, tests)."""
        return self._thread is not None

    def urgent_pending(self) -> bool:
        """Hinted groups wait for this worker or are being synced by it (a worker whose
        HAProxy is down has nothing running)."""
        with self._cond:
            return self.up and (self._urgent_sync
                                or any(d.urgent for d in self._dirty.values()))

    def pending(self) -> int:
        """Groups waiting to be synced."""
        with self._cond:
            return len(self._dirty)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"haproxy-{self.target}")
        self._thread.start()
        # Helpers: they decide nothing, and end once `_watch_stop` is set.
        helpers = [("watch", self._watch)]
        if self.state_file is not None:
            helpers += [("opens", self._watch_opens), ("file", self._write_file)]
        if self.old_workers is not None:
            helpers += [("old", functools.partial(self.old_workers.run, self._watch_stop))]
        for role, target in helpers:
            t = threading.Thread(target=target, daemon=True, name=f"haproxy-{role}-{self.target}")
            t.start()
            self._helpers.append(t)

    def stop(self, timeout_s: float = 3.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._watch_stop.set()
        self.h.release()
        self._file_due.set()  # wakes the file thread: it sees the stop and writes what is left
        if self.old_workers is not None:
            self.old_workers.wake()
        if self._thread is not None:
            self._thread.join(timeout_s)
        for t in self._helpers:
            t.join(timeout_s)

    def drain(self, full_read: bool = False) -> list[HAProxyOutcome]:
        """Inline mode (no thread): sync every dirty group now, in one sync; the outcome
        (none when nothing is dirty). `full_read`: read every backend (the outcome shows
        them all, undecided groups' too)."""
        with self._cond:
            groups = dict(self._dirty)
            self._dirty.clear()
        if not groups and not full_read:
            return []
        out = self.sync(groups, full_read)
        if out.error:
            with self._cond:
                for g, d in groups.items():
                    self._mark(g, d.since, d.urgent)
        self._save_state_file()
        return [out]

    def _mark(self, group: str, since: float, urgent: bool) -> None:
        d = self._dirty.get(group)
        if d is None or (urgent and not d.urgent):  # a hint's time beats a full pass's
            self._dirty[group] = _Dirty(since, urgent)
        elif urgent == d.urgent:
            d.since = min(d.since, since)

    # -- the thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                if not self._once():
                    return
            except Exception:  # a bug: say so and go on; never spin on it
                log.exception("unexpected_error", where="haproxy worker", haproxy=self.target)
                time.sleep(0.1)

    def _once(self) -> bool:
        """One unit of work (or a bounded wait for one); False once stopped."""
        with self._cond:
            now = time.monotonic()
            work = self.up and (bool(self._dirty) or self._lease_due or bool(self._prefetch))
            if not work and not self._stop and not self._probe_asked:
                self._cond.wait(max(0.0, self._next_probe - now))
            if self._stop:
                return False
            if self._gathering(time.monotonic()):
                return True
            batch = self._take() if self.up else {}
            self._urgent_sync = any(d.urgent for d in batch.values())
            held = self._sync_first and bool(batch or self._dirty)
            self._sync_first = held
            lease = self._lease_value if self._lease_due and self.up and not held else None
            self._lease_due = self._lease_due and lease is None
            ahead, self._prefetch = (self._prefetch, set()) if not batch else (set(), set())
            forgotten, self._forgotten = self._forgotten, set()
            asked = self._probe_asked  # cleared by the probe that answers it
        if forgotten:
            self._drop_forgotten(forgotten)
        now = time.monotonic()
        if not self.up:
            if asked or now >= self._next_probe:
                self.probe()
            return True
        if ahead:
            self._read_ahead(ahead)
            return True
        if lease is not None:  # first: a write server made ready is no use without a lease
            self._push_lease(lease)  # (a fresh HAProxy's empty map refuses every write)
        if batch:
            out: HAProxyOutcome | None = None
            raised = True
            try:
                out = self.sync(batch) if self.up else None  # down while pushing the lease
                raised = False
            finally:  # a bug in the sync (logged by `_run`) must not lose the batch
                with self._cond:
                    urgent, self._urgent_sync = self._urgent_sync, False
                    if out is None or out.error:
                        for g, d in batch.items():
                            if g in self._wanted:  # not forgotten meanwhile
                                # After a bug, not urgent: the loop must not wait for it.
                                self._mark(g, d.since, d.urgent and not raised)
                if urgent:  # outside `_cond`: the loop waits for this holding its own lock
                    self.hooks.applied()
        if self.state_file is not None and self.state_file.changed:
            self._file_due.set()  # written by the file thread: a slow disk holds no sync back
        if asked or (not batch and lease is None and time.monotonic() >= self._next_probe):
            self.probe()
        return True

    def _watch(self) -> None:
        """Hold an idle session open and wake the worker to probe the moment it ends, or the
        moment HAProxy can be reached again after it could not: a restart is then seen within
        WATCH_RETRY_S of the new HAProxy listening. Decides nothing (the probe does)."""
        gone_since: float | None = None
        while not self._watch_stop.is_set():
            try:
                ended = self.h.hold(WATCH_HOLD_S,
                                    on_open=self._probe_now if gone_since is not None else None)
                gone_since = None
                if ended and not self._watch_stop.is_set():
                    self._probe_now()
            except HAProxyError:
                if gone_since is None:
                    gone_since = time.monotonic()
                    self._probe_now()
                fast = time.monotonic() - gone_since < WATCH_FAST_FOR_S
                self._watch_stop.wait(WATCH_RETRY_S if fast else WATCH_SLOW_S)
            except Exception:  # a bug: say so and go on; never spin on it
                log.exception("unexpected_error", where="haproxy watch", haproxy=self.target)
                self._watch_stop.wait(1.0)

    def _watch_opens(self) -> None:
        """Wait for another process to open the state file (an HAProxy starting: a restart,
        or a master-worker reload, whose old worker keeps the watch's session), then ask
        `show info` until a new identity answers, and wake the worker to probe. Decides
        nothing (the probe does)."""
        assert self.state_file is not None
        try:
            opens = FileOpens(self.state_file.path)
        except OSError as e:
            log.warning("server_state_file_unwatched", haproxy=self.target,
                        path=str(self.state_file.path), error=str(e),
                        detail="a reload is seen by the probe, within haproxy_poll_interval_s")
            return
        try:
            while not self._watch_stop.is_set():
                try:
                    if opens.wait(0.25):
                        self._catch_new_identity()
                except Exception:  # a bug: say so and go on; never spin on it
                    log.exception("unexpected_error", where="haproxy state file watch",
                                  haproxy=self.target)
                    self._watch_stop.wait(1.0)
        finally:
            opens.close()

    def _write_file(self) -> None:
        """Write the server-state file whenever the worker says it changed, in this thread:
        a write that waits for the disk must not delay the next sync."""
        while True:
            self._file_due.wait(1.0)
            self._file_due.clear()
            try:
                self._save_state_file()
            except Exception:  # a bug: say so and go on; never spin on it
                log.exception("unexpected_error", where="haproxy state file writer",
                              haproxy=self.target)
                self._watch_stop.wait(1.0)
            if self._watch_stop.is_set():
                return

    def _catch_new_identity(self) -> None:
        """Ask `show info` until a new identity answers, then ask the worker to probe until
        its probe has recorded one too: for a moment after a reload both workers accept on
        the inherited sockets, and the probe's own connection may reach the old one
        (measured: 2 ms after `show info` had named the new worker)."""
        known = None if self._identity is None else self._key(self._identity)
        until = time.monotonic() + CATCH_FOR_S
        while time.monotonic() < until and not self._watch_stop.is_set():
            recorded = self._identity  # the worker's thread sets it; read once
            if recorded is not None and self._key(recorded) != known:
                return
            try:
                info = self.h.info()
            except HAProxyError:  # not listening yet (a restart)
                info = None
            if info is not None and (info.stopping or self._key(info) != known):
                self._probe_now()
            self._watch_stop.wait(CATCH_EVERY_S)

    @staticmethod
    def _key(info: HAProxyInfo) -> tuple[int, int]:
        """What tells one HAProxy process from another."""
        return info.pid, info.start_time_s

    def _probe_now(self) -> None:
        """Ask the worker for a probe. A flag, not `_next_probe`: the worker's own schedule
        (a failed probe's backoff) must not overwrite the watch's request."""
        with self._cond:
            self._probe_asked = True
            self._cond.notify_all()

    def _gathering(self, now: float) -> bool:
        """Whether to wait (bounded) for more of a full pass's groups before syncing: only
        full-pass groups are dirty, fewer than CHUNK, and nothing else is due. Called with
        `_cond` held; waits on it (a hinted group or a lease notifies)."""
        few = (self.up and 0 < len(self._dirty) < CHUNK and not self._lease_due
               and not self._prefetch and not any(d.urgent for d in self._dirty.values()))
        if not few:
            self._gather_until = None
            return False
        if self._gather_until is None:
            self._gather_until = now + GATHER_S
        if now >= self._gather_until:
            self._gather_until = None
            return False
        self._cond.wait(self._gather_until - now)
        return True

    def _take(self) -> dict[str, _Dirty]:
        """The next groups to sync: every urgent one (up to URGENT_MAX), else a chunk."""
        urgent = [g for g, d in self._dirty.items() if d.urgent][:URGENT_MAX]
        chosen = urgent or list(self._dirty)[:CHUNK]
        return {g: self._dirty.pop(g) for g in chosen}

    # -- talking to HAProxy ----------------------------------------------------------------
    def probe(self) -> bool:
        """`show info`; True when this HAProxy restarted, reloaded or came back (then every
        group is synced again and the loop is told)."""
        with self._cond:
            self._probe_asked = False  # this probe answers any request made before it
        self._next_probe = time.monotonic() + (self.poll_interval_s if self.up
                                               else self._backoff)
        try:
            info = self.h.info()
        except HAProxyError as e:
            self._down(str(e))
            return False
        return info.stopping or self._seen(info)

    def sync(self, groups: dict[str, _Dirty], full_read: bool = False) -> HAProxyOutcome:
        """Read these groups' backends (every backend with `full_read`), plan, apply,
        verify."""
        with self._cond:
            wanted = [t for g in groups for t in self._wanted.get(g, ())]
        backends = [t.backend for t in wanted]
        fresh, self._fresh = self._fresh, None
        if (fresh is not None and not full_read and set(backends) <= set(fresh.backends)
                and time.monotonic() - self._fresh_at < FRESH_FOR_S):
            state = fresh
        else:
            try:
                whole = full_read or len(backends) >= FULL_READ_AT
                state = self.h.state(None if whole else backends)
            except HAProxyError as e:
                self._down(str(e))
                return HAProxyOutcome(self.target, None, Plan(), error=str(e))
        self._seen(state.info)
        self._keep(state)
        edited = _admin_changes(self._left, state)
        p = plan(wanted, state)
        self._log_notes(groups, p.notes)
        if not p.commands:
            self._settled(groups, wanted, state, ())
            return HAProxyOutcome(self.target, state, p)
        if not self.apply:
            for c in p.commands:
                log.info("would_apply", haproxy=self.target, command=c.text, reason=c.reason)
            self._set_drift(groups, wanted, p.commands)
            return HAProxyOutcome(self.target, state, p, drift_after=p.drift)
        self._fresh = None
        if not self.write_lease and self.state_file is not None:
            # An HAProxy restarted in the next instant must not route what is being taken
            # out. With the lease it cannot take writes before this worker synced it; without,
            # the file must say so first, here, on the failover's path (~0.2 ms).
            fenced = {(c.backend, c.server) for c in p.commands if _unroutes(c)}
            if fenced:
                self.state_file.fence(fenced)
                self._save_state_file()
        try:  # the read-back goes in the same exchange when it fits (`run_and_read`)
            done = self.h.run_and_read(p.commands,
                                       None if len(backends) >= FULL_READ_AT else backends)
        except HAProxyError as e:
            if e.partial:  # applied before the exchange that failed: in the audit trail too
                self._report(e.partial, groups, wanted, edited)
                self._close_old_sessions(e.partial)
            self._down(str(e))
            return HAProxyOutcome(self.target, state, p, tuple(e.partial), error=str(e))
        self._report(done.results, groups, wanted, edited)
        self._close_old_sessions(done.results)
        out = HAProxyOutcome(self.target, state, p, tuple(done.results))
        return self._verify(groups, wanted, out, done)

    def _close_old_sessions(self, results: Sequence[CommandResult]) -> None:
        """The sessions a reload's old workers keep to the servers whose sessions were just
        shut here: shut too (after the commands, off the failover's path)."""
        shut = [r.command for r in results if r.ok and r.command.after == "sessions-closed"]
        if shut and self.old_workers is not None:
            servers = {(c.backend, c.server) for c in shut}
            if self.threaded:
                self.old_workers.request(servers, shut[0].reason)
            else:
                self.old_workers.close(servers, shut[0].reason)

    def _read_ahead(self, backends: set[str]) -> None:
        try:
            self._fresh_at = time.monotonic()
            self._fresh = self.h.state(sorted(backends))
            self._keep(self._fresh)
        except HAProxyError as e:
            self._fresh = None
            self._down(str(e))

    def _report(self, results: Sequence[CommandResult], groups: dict[str, _Dirty],
                wanted: Sequence[BackendTarget], edited: set[tuple[str, str]]) -> None:
        """One line per change applied (latency from the hint its group answers), counters,
        and a hand edit undone when a changed server is put back."""
        applied_at = time.monotonic()
        group_of = {t.backend: t.group for t in wanted}
        ok = failed = 0
        latency_ms = 0.0
        for r in results:
            c = r.command
            if r.ok:
                ok += 1
                since = groups[group_of[c.backend]].since if c.backend in group_of else applied_at
                latency_ms = (applied_at - since) * 1000
                log.info("server_state_changed", haproxy=self.target, backend=c.backend,
                         server=c.server, **{"from": c.before or None, "to": c.after},
                         reason=c.reason, latency_ms=round(latency_ms, 2),
                         **self.hooks.timeline())
            else:
                failed += 1
                log.error("command_failed", haproxy=self.target, command=c.text,
                          reply=r.output, reason=c.reason)
        undone = [r.command for r in results
                  if r.ok and (r.command.backend, r.command.server) in edited]
        self.counters.add(commands_applied=ok, commands_failed=failed,
                          passes_with_changes=1 if ok else 0,
                          hand_edits_undone=1 if undone else 0)
        if ok:
            self.counters.last_event_to_applied_ms = latency_ms
        if undone:
            log.warning("drift_corrected", haproxy=self.target, commands=len(undone),
                        servers=sorted(f"{c.backend}/{c.server}" for c in undone),
                        detail="HAProxy was changed by someone else (hand edit?): undone")
            self.hooks.emit("drift_corrected", {"haproxy": self.target,
                                                "commands": len(undone)})
        if failed:
            self.counters.failing_since.setdefault(self.target, time.monotonic())

    def _verify(self, groups: dict[str, _Dirty], wanted: Sequence[BackendTarget],
                o: HAProxyOutcome, done: AppliedAndRead) -> HAProxyOutcome:
        """Plan again on the state read back after the commands; anything left is drift we
        could not fix."""
        state = done.state
        if state is None:  # unknown: the next sync cannot call a change a hand edit
            for b in {t.backend for t in wanted}:
                for key in [k for k in self._left if k[0] == b]:
                    del self._left[key]
            log.warning("verify_failed", haproxy=self.target, error=done.read_error)
            self._set_drift(groups, wanted, None)
            return dataclasses.replace(o, drift_after=None)
        self._keep(state)
        left = plan(wanted, state)
        if left.drift:
            log.warning("drift_remains", haproxy=self.target, commands=left.drift)
        self._settled(groups, wanted, state, left.commands)
        return dataclasses.replace(o, drift_after=left.drift)

    def _settled(self, groups: dict[str, _Dirty], wanted: Sequence[BackendTarget],
                 state: HAProxyState, left: Sequence[Command]) -> None:
        """Remember what a sync left: admin states (hand-edit detection), the drift per
        group (`left`: commands still needed), the write servers per group (metrics)."""
        read = {t.backend for t in wanted}
        self._left.update({k: v for k, v in _admin(state).items() if k[0] in read})
        self._set_drift(groups, wanted, left)
        for t in wanted:
            if t.role == "write":
                servers = state.backends.get(t.backend, {})
                self.counters.write_servers[(self.target, t.group)] = ",".join(
                    sorted(n for n, srv in servers.items() if srv.admin is AdminState.READY))

    def _set_drift(self, groups: dict[str, _Dirty], wanted: Sequence[BackendTarget],
                   left: Sequence[Command] | None) -> None:
        group_of = {t.backend: t.group for t in wanted}
        for g in groups:
            self._drift[g] = None if left is None else 0
        if left is not None:
            for c in left:
                owner = group_of.get(c.backend)
                if owner is not None:
                    self._drift[owner] = (self._drift.get(owner) or 0) + 1
        self._publish_drift()

    def _publish_drift(self) -> None:
        values = list(self._drift.values())
        total = None if None in values else sum(v or 0 for v in values)
        self.counters.drift[self.target] = total
        if total == 0:
            self.counters.failing_since.pop(self.target, None)
        else:
            self.counters.failing_since.setdefault(self.target, time.monotonic())

    # -- identity, reachability, lease ------------------------------------------------------
    def _down(self, error: str) -> None:
        if self.up:
            log.error("haproxy_unreachable", haproxy=self.target, error=error)
            self._backoff = MIN_BACKOFF_S
        else:
            self._backoff = min(self.poll_interval_s, self._backoff * 2)
        self.up = False
        self.counters.haproxy_up[self.target] = False
        self._next_probe = time.monotonic() + self._backoff
        self._left.clear()

    def _seen(self, info: HAProxyInfo) -> bool:
        """Record this HAProxy's identity; True when it is new (first sight, restart, reload,
        back): what this worker left in it is forgotten (its state is no hand edit), its lease
        map is looked up again, and after a restart or a return every group is synced."""
        old, was_down = self._identity, not self.up
        self.up = True
        self._backoff = MIN_BACKOFF_S
        self.counters.haproxy_up[self.target] = True
        self._identity = info
        if old is not None and self._key(old) != self._key(info):
            log.warning("haproxy_restarted", haproxy=self.target, old_pid=old.pid,
                        pid=info.pid)
        elif was_down:
            log.info("haproxy_reachable", haproxy=self.target, pid=info.pid)
        elif old is not None:
            return False
        self._left.clear()
        self._lease_file_known = False
        with self._cond:
            self._sync_first = bool(self._wanted)
            if self._lease_value is not None:
                self._lease_due = True
            if old is not None or was_down:
                for g in self._wanted:
                    self._mark(g, time.monotonic(), False)
            self._cond.notify_all()
        if old is not None or was_down:
            self.hooks.haproxy_changed(self.target)
        return True

    def _keep(self, state: HAProxyState) -> None:
        """Every state read goes to the server-state file's lines (written by the file
        thread)."""
        if self.state_file is not None:
            self.state_file.record(state)

    def _save_state_file(self) -> None:
        """Write the server-state file when a server changed; a failure is logged once and
        changes nothing else: the file only narrows a gap."""
        f = self.state_file
        if f is None or not self.apply or not f.changed:  # `status` changes nothing
            return
        try:
            f.save()
        except OSError as e:
            if str(e) != self._state_file_error:
                log.warning("server_state_file_failed", haproxy=self.target, path=str(f.path),
                            error=str(e), detail="a restarted or reloaded HAProxy routes "
                            "nothing until the controller reaches it")
            self._state_file_error = str(e)
            return
        if self._state_file_error:
            log.info("server_state_file_written", haproxy=self.target, path=str(f.path))
            self._state_file_error = ""

    def _push_lease(self, value_ms: str) -> None:
        if not self._lease_file_known:
            try:
                found = [f for f in self.h.maps()
                         if f == self.lease_map
                         or f.rsplit("/", 1)[-1] == self.lease_map.rsplit("/", 1)[-1]]
            except HAProxyError as e:
                self._down(str(e))
                return
            self._lease_file = found[0] if found else None
            self._lease_file_known = True
            if not found and self.write_lease:
                log.error("write_lease_map_missing", haproxy=self.target, map=self.lease_map,
                          detail="this HAProxy does not check the write lease: new writes are "
                          "not refused when the controller is gone (see the runbook)")
        if self._lease_file is None:
            return
        try:
            self.h.set_map(self._lease_file, "lease", value_ms)
        except HAProxyError as e:
            self._lease_file_known = False  # look it up again next time
            if not e.refused:
                self._down(str(e))
            elif self._lease_refused != str(e):  # HAProxy answered: a failing command
                self.counters.add(commands_failed=1)
                self.counters.failing_since.setdefault(self.target, time.monotonic())
                log.error("command_failed", haproxy=self.target, command=e.command,
                          reply=str(e), reason="renew the write lease")
            self._lease_refused = str(e) if e.refused else ""
            return
        self._lease_refused = ""

    def _log_notes(self, groups: dict[str, _Dirty], notes: Sequence[Note]) -> None:
        """Log a config problem (backend missing, master not in backend) when it appears and
        when it is gone, not on every sync: a standing problem must not flood the log."""
        for g in groups:
            current = {n for n in notes if n.group == g}
            before = self._notes.get(g, set())
            for note in sorted(current - before, key=str):
                log.error(note.event, group=note.group, backend=note.backend,
                          detail=note.detail, haproxy=self.target)
            for note in sorted(before - current, key=str):
                log.info("resolved", problem=note.event, group=note.group,
                         backend=note.backend, haproxy=self.target)
            self._notes[g] = current
            self._drop_slot_gauges({g})
            self.counters.nodes_without_slot.update(
                {(self.target, n.group, n.backend): n.count for n in current if n.count})


def _admin(state: HAProxyState) -> dict[tuple[str, str], AdminState]:
    return {(be, name): srv.admin for be, servers in state.backends.items()
            for name, srv in servers.items()}


def _unroutes(c: Command) -> bool:
    """The command takes its server out of service, or points it elsewhere."""
    return c.text.endswith(" state maint") or " addr " in c.text


def _admin_changes(
    left: dict[tuple[str, str], AdminState], state: HAProxyState
) -> set[tuple[str, str]]:
    """Servers whose admin state differs from what this worker left them in (only servers it
    knows: a new, restarted or returning HAProxy has none)."""
    now = _admin(state)
    return {k for k, v in now.items() if k in left and left[k] != v}
