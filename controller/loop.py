"""The level-triggered reconcile loop.

A pass: read every Sentinel -> `decide` per group -> for each HAProxy read its state ->
`plan` -> apply in one exchange -> read again and verify. Passes run on every hint (a
Sentinel event, a (re)connect or loss of a Sentinel), when an HAProxy restarts, reloads or
comes back, when the replica a failover leader is promoting answers ROLE master (asked every
`promotion_poll_interval_s` until then, at most for the group's failover timeout), when the
roster asks for one (re-checks after `+slave`, a node's name resolving elsewhere), and every
`resync_interval_s`. Events only shorten the wait; a missed event changes nothing. The loop
never dies from a bug: it logs `unexpected_error` and goes on.
Must not talk to Sentinel, HAProxy or Redis nodes except through their adapters.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from controller import lease
from controller.decide import History, Rules, decide
from controller.haproxy import CommandResult, HAProxyError
from controller.model import (
    Address,
    AdminState,
    Command,
    Decision,
    HAProxyInfo,
    HAProxyState,
    SentinelView,
)
from controller.plan import BackendTarget, Note, Plan, plan, targets
from controller.redis_nodes import NodeError
from controller.roster import Roster
from controller.sentinel import Hint, HintQueue
from controller.sentinel_parse import FAILOVER_EVENTS
from controller.settings import Settings

log = structlog.get_logger("controller")

INCIDENT_QUIET_S = 30.0  # a failover timeline ends after this long without failover events


class SentinelSource(Protocol):
    """What the loop needs from the Sentinel side (`sentinel.SentinelReader`)."""

    @property
    def master_names(self) -> list[str]: ...

    def read(self, skip: Collection[str] = ()) -> list[SentinelView]: ...

    def discover(self) -> list[Address]: ...


class HAProxyTarget(Protocol):
    """What the loop needs from one HAProxy (`haproxy.HAProxyClient`); errors: HAProxyError."""

    target: str

    def info(self) -> HAProxyInfo: ...

    def state(self) -> HAProxyState: ...

    def run(self, commands: Sequence[Command]) -> list[CommandResult]: ...

    def maps(self) -> list[str]: ...

    def set_map(self, file: str, key: str, value: str) -> None: ...


class NodeRoles(Protocol):
    """What the loop needs from Redis nodes (`redis_nodes.RedisNodes`); errors: NodeError."""

    def role(self, addr: Address) -> str: ...

    def forget(self, keep: set[Address]) -> None: ...


class Watcher(Protocol):
    """An event watcher's face to the loop and metrics (`sentinel.EventWatcher`)."""

    addr: Address
    connected: bool
    last_error: str
    last_pong: float  # time.monotonic() of its last pong

    def start(self) -> None: ...

    def stop(self, timeout_s: float = 2.0) -> None: ...


@dataclass
class Counters:
    """What the loop did, for metrics and health; written by the loop thread only."""

    passes: int = 0
    commands_applied: int = 0
    commands_failed: int = 0
    failovers_seen: int = 0
    passes_with_changes: int = 0  # passes that applied at least one command
    hand_edits_undone: int = 0  # of those: HAProxy changed while Sentinel did not
    last_event_to_applied_ms: float | None = None
    last_pass_ok: float = 0.0  # monotonic time of the last pass that read enough Sentinels
    haproxy_up: dict[str, bool] = field(default_factory=dict)
    # Per HAProxy, commands still needed after the last pass; None: unknown (read-back failed).
    drift: dict[str, int | None] = field(default_factory=dict)
    undecided: set[str] = field(default_factory=set)
    undecided_since: dict[str, float] = field(default_factory=dict)  # group -> monotonic
    # HAProxy -> monotonic time since which its passes refuse commands or leave drift
    failing_since: dict[str, float] = field(default_factory=dict)
    # (haproxy, group, backend) -> nodes that have no server slot (plan note slots_exhausted)
    nodes_without_slot: dict[tuple[str, str, str], int] = field(default_factory=dict)


@dataclass(frozen=True)
class HAProxyOutcome:
    target: str
    state: HAProxyState | None
    plan: Plan
    results: tuple[CommandResult, ...] = ()
    error: str = ""
    drift_after: int | None = 0  # None: the read-back failed, the drift is unknown


@dataclass
class Promotion:
    """A replica the failover leader is promoting, watched until it answers ROLE master."""

    addr: Address
    until: float  # monotonic: the group's failover timeout after it was first seen
    is_master: bool = False
    error: str = ""  # last ROLE failure, logged once


@dataclass(frozen=True)
class PassResult:
    trigger: str
    views: tuple[SentinelView, ...]
    decisions: tuple[Decision, ...]
    haproxies: tuple[HAProxyOutcome, ...]
    duration_ms: float


class Controller:
    def __init__(
        self,
        settings: Settings,
        reader: SentinelSource,
        haproxies: Sequence[HAProxyTarget],
        watchers: Sequence[Watcher] = (),
        hints: HintQueue | None = None,
        on_change: Callable[[str, dict[str, object]], None] | None = None,
        nodes: NodeRoles | None = None,
        new_watcher: Callable[[Address], Watcher] | None = None,
        roster: Roster | None = None,
    ) -> None:
        self.settings = settings
        self.roster = roster  # None: addresses used as Sentinel gives them, no re-checks
        self.reader = reader
        self.haproxies = list(haproxies)
        self.watchers = list(watchers)
        self.nodes = nodes  # None: early promotion off (no Redis node is ever asked)
        self.new_watcher = new_watcher  # for Sentinels found by discovery
        self.rules = Rules(
            max_link_down_ms=int(settings.max_replica_link_down_s * 1000),
            early_promotion=settings.early_promotion and nodes is not None,
        )
        self.hints = hints or HintQueue()
        self.counters = Counters()
        self.on_change = on_change  # webhook/alert hook; must not block
        self._decisions: dict[str, Decision] = {}  # last decided verdict per group
        self._undecided: dict[str, str] = {}  # group -> reason, while undecided
        self._notes: dict[str, set[Note]] = {}  # standing plan notes per HAProxy
        self._epochs: dict[str, int] = {}  # highest config-epoch acted on, per group
        self._readers: dict[str, frozenset[Address]] = {}  # replicas serving reads, per group
        self.promotions: dict[str, Promotion] = {}  # group -> replica being promoted
        self.sentinel_states: dict[str, str] = {}  # address -> ok, tilt, unreachable, ...
        self.write_servers: dict[tuple[str, str], str] = {}  # (haproxy, group) -> ready servers
        # The write lease (controller/lease.py): valid until (monotonic); one TTL of grace
        # from the start, so that a restarted controller does not fence working writes.
        self.lease_ttl_s = lease.ttl_for([], settings.write_lease_ttl_s)
        self.lease_until: float | None = time.monotonic() + self.lease_ttl_s
        self._lease_expired_logged = False
        self._lease_maps: dict[str, str | None] = {}  # HAProxy -> its lease map, when known
        self._members = 0  # Sentinels of the groups, as they report (num-other-sentinels + 1)
        self._push_lease_now = True
        self._lease_refused: dict[str, str] = {}  # HAProxy -> last refusal, logged once
        self._down_after_ms: list[int] = []
        self._duplicates: set[frozenset[str]] = set()  # address sets already reported
        self._identity: dict[str, HAProxyInfo | None] = {h.target: None for h in self.haproxies}
        self._incident_t0: float | None = None
        self._incident_last = 0.0
        # Per HAProxy, each server's admin state as this controller last saw it after a pass.
        self._left: dict[str, dict[tuple[str, str], AdminState]] = {}

    # -- observing -----------------------------------------------------------------
    def observe(self) -> tuple[list[SentinelView], list[Decision]]:
        skip = {str(w.addr) for w in self.watchers if not w.connected and w.last_error}
        views = self.reader.read(skip=skip)
        self._note_sentinels(views)
        groups = [m for v in views if v.usable for m in v.masters.values()]
        if groups:
            self._members = max(m.other_sentinels + 1 for m in groups)
            self._down_after_ms = [m.down_after_ms for m in groups if m.down_after_ms > 0]
            self.lease_ttl_s = lease.ttl_for(self._down_after_ms, self.settings.write_lease_ttl_s)
        if self.roster is not None:
            views = self.roster.normalize(views)
        n = self.settings.min_sentinels or None  # None: a majority of the group's Sentinels
        decisions = [decide(name, views, n, self._history(name), self.rules)
                     for name in self.reader.master_names]
        if self.roster is not None:
            decisions = [self.roster.adjust(d, views, self._readers.get(d.name, frozenset()))
                         for d in decisions]
        for d in decisions:
            if d.master is not None:
                self._epochs[d.name] = d.epoch  # >= the old one, or agreed by all
                self._readers[d.name] = d.replicas
            self._watch_promotion(d)
        if self.nodes is not None:
            self.nodes.forget({p.addr for p in self.promotions.values()})
        return views, decisions

    def prime(self) -> None:
        """Before the first pass: learn the Sentinels' IDs and find the ones not configured,
        so that the first verdict already counts every Sentinel of the group."""
        self.reader.read()
        self.discover()

    def discover(self) -> None:
        """Find the group's other Sentinels (one configured Sentinel is enough to start);
        read them from the next pass on and watch their events."""
        for addr in self.reader.discover():
            log.info("sentinel_discovered", sentinel=str(addr))
            if self.new_watcher is not None:
                w = self.new_watcher(addr)
                self.watchers.append(w)
                w.start()

    def _note_sentinels(self, views: Sequence[SentinelView]) -> None:
        """One line when a Sentinel's state changes (ok, tilt, unreachable, auth, not a
        Sentinel, bad reply), and once for a Sentinel listed under several addresses."""
        for v in views:
            state = v.problem or ("unreachable" if v.error else "tilt" if v.tilt else "ok")
            before = self.sentinel_states.get(v.sentinel)
            self.sentinel_states[v.sentinel] = state
            if state == before:
                continue
            if state == "ok":
                if before is not None:
                    log.info("sentinel_usable", sentinel=v.sentinel, was=before)
            else:
                log.warning("sentinel_unusable", sentinel=v.sentinel, state=state,
                            error=v.error or "TILT mode: its state is not trusted", **self._t())
        by_id: dict[str, list[str]] = {}
        for v in views:
            if v.myid:
                by_id.setdefault(v.myid, []).append(v.sentinel)
        for myid, addrs in by_id.items():
            key = frozenset(addrs)
            if len(addrs) > 1 and key not in self._duplicates:
                self._duplicates.add(key)
                log.warning("sentinel_duplicate", myid=myid, sentinels=sorted(addrs),
                            detail="one Sentinel listed several times: it has one vote")

    def verdicts(self) -> dict[str, Decision]:
        """The last verdict per group (decided or not): for metrics and status."""
        out = dict(self._decisions)
        for group, reason in self._undecided.items():
            out[group] = Decision(name=group, master=None, reason=reason)
        return out

    # -- the write lease ---------------------------------------------------------------
    def renew_lease(self) -> bool:
        """Push the lease to every HAProxy that has the lease map; True when it just expired
        or came back (the caller then runs a pass: it fences, or unfences, the writes)."""
        now = time.monotonic()
        if self.settings.write_lease:
            pongs = [w.last_pong for w in self.watchers if w.connected]
            members = self._members or len(self.watchers)
            until = lease.valid_until(pongs, members, self.lease_ttl_s)
            if until is not None and (self.lease_until is None or until > self.lease_until):
                self.lease_until = until
            value_ms = (time.time() + ((self.lease_until or now) - now)) * 1000
        else:
            value_ms = (time.time() + 10 * 365 * 86400) * 1000  # off: never expires
        for h in self.haproxies:
            self._push_lease(h, str(int(value_ms)))
        expired = self.lease_expired()
        changed = expired != self._lease_expired_logged
        if expired and changed:
            log.warning("write_lease_expired", ttl_s=self.lease_ttl_s,
                        detail="no majority of Sentinels heard: new writes refused by HAProxy, "
                        "write backends fenced", **self._t())
        elif changed:
            log.info("write_lease_renewed", ttl_s=self.lease_ttl_s)
        self._lease_expired_logged = expired
        return changed

    def lease_expired(self) -> bool:
        return (self.settings.write_lease
                and (self.lease_until is None or time.monotonic() > self.lease_until))

    def _push_lease(self, h: HAProxyTarget, value_ms: str) -> None:
        if h.target not in self._lease_maps:
            try:
                wanted = self.settings.write_lease_map
                found = [f for f in h.maps()
                         if f == wanted or f.rsplit("/", 1)[-1] == wanted.rsplit("/", 1)[-1]]
            except HAProxyError as e:
                self._haproxy_down(h.target, str(e))
                return
            self._lease_maps[h.target] = found[0] if found else None
            if not found and self.settings.write_lease:
                log.error("write_lease_map_missing", haproxy=h.target,
                          map=self.settings.write_lease_map,
                          detail="this HAProxy does not check the write lease: new writes are "
                          "not refused when the controller is gone (see the runbook)")
        file = self._lease_maps.get(h.target)
        if file is None:
            return
        try:
            h.set_map(file, "lease", value_ms)
        except HAProxyError as e:
            self._lease_maps.pop(h.target, None)  # look it up again next time
            if not e.refused:
                self._haproxy_down(h.target, str(e))
            elif self._lease_refused.get(h.target) != str(e):
                self.counters.commands_failed += 1
                self.counters.failing_since.setdefault(h.target, time.monotonic())
                log.error("command_failed", haproxy=h.target, command=e.command,
                          reply=str(e), reason="renew the write lease")
            self._lease_refused[h.target] = str(e) if e.refused else ""
            return
        self._lease_refused.pop(h.target, None)

    def _fenced_by_lease(self, decisions: Sequence[Decision]) -> list[Decision]:
        """With the lease expired every group's writes are fenced, also an undecided group's
        (its last decided verdict, fenced): the controller cannot vouch for any master."""
        why = ("write lease expired: no majority of Sentinels heard for "
               f"{self.lease_ttl_s:g} s")
        out = []
        for d in decisions:
            base = d if d.master is not None else self._decisions.get(d.name)
            out.append(dataclasses.replace(base, fenced=True, reason=why) if base else d)
        return out

    def _history(self, name: str) -> History:
        p = self.promotions.get(name)
        confirmed = p is not None and p.is_master and time.monotonic() < p.until
        return History(self._epochs.get(name, -1), self._readers.get(name, frozenset()),
                       p.addr if p is not None and confirmed else None)

    def _watch_promotion(self, d: Decision) -> None:
        """Start watching the replica a leader promotes; stop when the verdict no longer
        names it (promoted and confirmed, or the failover aborted: fenced again)."""
        p = self.promotions.get(d.name)
        if d.promoting is None or not self.rules.early_promotion:
            if p is not None:
                self.promotions.pop(d.name)
                log.info("promotion_watch_ended", group=d.name, replica=str(p.addr),
                         outcome="confirmed by Sentinel" if d.master == p.addr
                         else "no longer promoted (failover aborted or leader lost)",
                         **self._t())
            return
        if p is None or p.addr != d.promoting:
            # failover-timeout is a 64-bit number in Redis: garbage beyond that would
            # overflow the float and make every pass raise.
            timeout_s = (min(max(d.failover_timeout_ms, -(2**63)), 2**63) or 180_000) / 1000
            self.promotions[d.name] = Promotion(d.promoting, time.monotonic() + timeout_s)
            log.info("promotion_watch", group=d.name, replica=str(d.promoting),
                     timeout_s=timeout_s, **self._t())

    def poll_promotions(self) -> bool:
        """Ask ROLE of every replica being promoted; True when one just became master."""
        if self.nodes is None:
            return False
        now = time.monotonic()
        changed = False
        for group, p in self.promotions.items():
            if p.is_master or now >= p.until:
                continue
            try:
                role = self.nodes.role(p.addr)
            except NodeError as e:
                if str(e) != p.error:
                    log.warning("role_check_failed", group=group, replica=str(p.addr),
                                error=str(e))
                p.error = str(e)
                continue
            if role == "master":
                p.is_master = changed = True
                log.info("promoted_replica_is_master", group=group, replica=str(p.addr),
                         **self._t())
        return changed

    def promotions_pending(self) -> bool:
        now = time.monotonic()
        return any(not p.is_master and now < p.until for p in self.promotions.values())

    # -- one pass ------------------------------------------------------------------
    def reconcile(self, trigger: str, since: float | None = None, apply: bool = True) -> PassResult:
        start = time.monotonic()
        since = since or start
        views, decisions = self.observe()
        self._note_decisions(decisions, trigger)
        routed = self._fenced_by_lease(decisions) if self.lease_expired() else decisions
        wanted, _undecided_notes = targets(  # undecided: logged by _note_decisions
            routed, self.settings.write_backend, self.settings.read_backend,
            self.settings.read_fallback_to_master, self.settings.slot_prefix,
        )
        # Apply to every HAProxy first, then verify: a second HAProxy must not wait for the
        # first one's read-back.
        applied = [self._reconcile_one(h, wanted, since, apply) for h in self.haproxies]
        outcomes = [self._verify(h, wanted, o) if o.results else o
                    for h, o in zip(self.haproxies, applied, strict=True)]
        duration_ms = (time.monotonic() - start) * 1000
        for o in outcomes:
            troubled = o.drift_after != 0 or any(not r.ok for r in o.results)
            if troubled and not o.error:
                self.counters.failing_since.setdefault(o.target, time.monotonic())
            elif not troubled:
                self.counters.failing_since.pop(o.target, None)
        self.counters.passes += 1
        if any(v.usable for v in views):
            self.counters.last_pass_ok = time.monotonic()
        result = PassResult(trigger, tuple(views), tuple(decisions), tuple(outcomes), duration_ms)
        self._log_summary(result)
        return result

    def _reconcile_one(
        self,
        h: HAProxyTarget,
        wanted: Sequence[BackendTarget],
        since: float,
        apply: bool,
    ) -> HAProxyOutcome:
        try:
            state = h.state()
        except HAProxyError as e:
            self._haproxy_down(h.target, str(e))
            return HAProxyOutcome(h.target, None, Plan(), error=str(e))
        # A server whose admin state is not what this controller left it in was changed by
        # someone else (a new, restarted or returning HAProxy forgets what it was left in).
        self._haproxy_seen(h.target, state.info)
        edited = _admin_changes(self._left.get(h.target), state)
        p = plan(wanted, state)
        self._log_notes(h.target, p.notes)  # undecided notes: logged by _note_decisions
        if not p.commands:
            self.counters.drift[h.target] = 0
            self._left_in(h.target, state, wanted)
            return HAProxyOutcome(h.target, state, p)
        if not apply:
            for c in p.commands:
                log.info("would_apply", haproxy=h.target, command=c.text, reason=c.reason)
            self.counters.drift[h.target] = p.drift
            return HAProxyOutcome(h.target, state, p, drift_after=p.drift)
        try:
            results = h.run(p.commands)
        except HAProxyError as e:
            self._haproxy_down(h.target, str(e))
            return HAProxyOutcome(h.target, state, p, error=str(e))
        applied_at = time.monotonic()
        latency_ms = (applied_at - since) * 1000
        ok = 0
        for r in results:
            c = r.command
            if r.ok:
                ok += 1
                log.info(
                    "server_state_changed", haproxy=h.target, backend=c.backend, server=c.server,
                    **{"from": c.before or None, "to": c.after}, reason=c.reason,
                    latency_ms=round(latency_ms, 2), **self._t(),
                )
            else:
                self.counters.commands_failed += 1
                log.error("command_failed", haproxy=h.target, command=c.text, reply=r.output,
                          reason=c.reason)
        self.counters.commands_applied += ok
        if ok:
            self.counters.passes_with_changes += 1
            self.counters.last_event_to_applied_ms = latency_ms
            undone = [r.command for r in results
                      if r.ok and (r.command.backend, r.command.server) in edited]
            if undone:
                self.counters.hand_edits_undone += 1
                log.warning("drift_corrected", haproxy=h.target, commands=len(undone),
                            servers=sorted(f"{c.backend}/{c.server}" for c in undone),
                            detail="HAProxy was changed by someone else (hand edit?): undone")
                self._emit("drift_corrected", {"haproxy": h.target, "commands": len(undone)})
        return HAProxyOutcome(h.target, state, p, tuple(results))

    def _verify(
        self, h: HAProxyTarget, wanted: Sequence[BackendTarget], o: HAProxyOutcome
    ) -> HAProxyOutcome:
        """Read back and plan again; anything left is drift we could not fix."""
        drift_after: int | None = None
        try:
            state = h.state()
            drift_after = plan(wanted, state).drift
            self._left_in(h.target, state, wanted)
        except HAProxyError as e:
            self._left.pop(h.target, None)  # unknown: the next pass cannot call it a hand edit
            log.warning("verify_failed", haproxy=h.target, error=str(e))
        if drift_after:
            log.warning("drift_remains", haproxy=h.target, commands=drift_after)
        self.counters.drift[h.target] = drift_after
        return dataclasses.replace(o, drift_after=drift_after)

    # -- bookkeeping and logs ---------------------------------------------------------
    def _t(self) -> dict[str, float]:
        """Elapsed ms in the current failover timeline, when one is open."""
        now = time.monotonic()
        if self._incident_t0 is None or now - self._incident_last > INCIDENT_QUIET_S:
            return {}
        return {"t_ms": round((now - self._incident_t0) * 1000, 1)}

    def _note_decisions(self, decisions: Sequence[Decision], trigger: str) -> None:
        """Log verdict changes: one line when a group becomes undecided or decided again,
        when its master changes, when a replica is lost or back, when it is fenced."""
        for d in decisions:
            if d.master is None:
                if self._undecided.get(d.name) != d.reason:
                    log.warning("undecided", group=d.name, reason=d.reason,
                                action="haproxy keeps its state", **self._t())
                    self._emit("undecided", {"group": d.name, "reason": d.reason})
                self._undecided[d.name] = d.reason
                continue
            if self._undecided.pop(d.name, None) is not None:
                log.info("decided", group=d.name, master=str(d.master), epoch=d.epoch)
            old = self._decisions.get(d.name)  # the last decided verdict
            if old is None:
                log.info("master_known", group=d.name, master=str(d.master), epoch=d.epoch,
                         replicas=sorted(str(r) for r in d.replicas))
            elif old.master != d.master:
                self.counters.failovers_seen += 1
                log.info("master_changed", group=d.name, **{"from": str(old.master)},
                         to=str(d.master), epoch=d.epoch, early=d.early, trigger=trigger,
                         **self._t())
                self._emit("failover", {"group": d.name, "from": str(old.master),
                                        "to": str(d.master), "epoch": d.epoch})
            else:
                for r in sorted(old.replicas - d.replicas):
                    log.info("replica_lost", group=d.name, replica=str(r), **self._t())
                    self._emit("replica_lost", {"group": d.name, "replica": str(r)})
                for r in sorted(d.replicas - old.replicas):
                    log.info("replica_healthy", group=d.name, replica=str(r), **self._t())
                    self._emit("replica_back", {"group": d.name, "replica": str(r)})
            if d.fenced and not (old and old.fenced):
                log.warning("master_fenced", group=d.name, reason=d.reason, **self._t())
            self._decisions[d.name] = d
        self.counters.undecided = set(self._undecided)
        now = time.monotonic()
        for group in self._undecided:
            self.counters.undecided_since.setdefault(group, now)
        for group in list(self.counters.undecided_since):
            if group not in self._undecided:
                del self.counters.undecided_since[group]

    def _log_notes(self, target: str, notes: Sequence[Note]) -> None:
        """Log a config problem (backend missing, master not in backend) when it appears and
        when it is gone, not on every pass: a standing problem must not flood the log."""
        current = set(notes)
        before = self._notes.get(target, set())
        for note in sorted(current - before, key=str):
            log.error(note.event, group=note.group, backend=note.backend, detail=note.detail,
                      haproxy=target)
        for note in sorted(before - current, key=str):
            log.info("resolved", problem=note.event, group=note.group, backend=note.backend,
                     haproxy=target)
        self._notes[target] = current
        slots = self.counters.nodes_without_slot
        for key in [k for k in slots if k[0] == target]:
            del slots[key]
        slots.update({(target, n.group, n.backend): n.count for n in current if n.count})

    def _emit(self, kind: str, data: dict[str, object]) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(kind, data)
        except Exception:  # an alert hook must never break the control path
            log.exception("unexpected_error", where="on_change hook")

    def _left_in(self, target: str, state: HAProxyState, wanted: Sequence[BackendTarget]) -> None:
        """Remember the state a pass left an HAProxy in: admin states (hand-edit detection)
        and, per group, the server it routes writes to (the fleet view in metrics)."""
        self._left[target] = _admin(state)
        for t in wanted:
            if t.role == "write":
                servers = state.backends.get(t.backend, {})
                self.write_servers[(target, t.group)] = ",".join(
                    sorted(n for n, srv in servers.items() if srv.admin is AdminState.READY))

    def _haproxy_down(self, target: str, error: str) -> None:
        self._left.pop(target, None)
        if self.counters.haproxy_up.get(target, True):
            log.error("haproxy_unreachable", haproxy=target, error=error)
        self.counters.haproxy_up[target] = False

    def _haproxy_seen(self, target: str, info: HAProxyInfo) -> bool:
        """Record an HAProxy's identity; True when it is new (restart, reload, back): then
        what this controller left in it is forgotten (its state is not a hand edit)."""
        new = self._identity_changed(target, info)
        if new:
            self._left.pop(target, None)
            self._lease_maps.pop(target, None)  # a new process: find its map, push the lease
            self._push_lease_now = True
        return new

    def _identity_changed(self, target: str, info: HAProxyInfo) -> bool:
        old = self._identity.get(target)
        was_down = not self.counters.haproxy_up.get(target, True)
        self.counters.haproxy_up[target] = True
        self._identity[target] = info
        if old is None:
            if was_down:
                log.info("haproxy_reachable", haproxy=target, pid=info.pid)
            return True
        if (old.pid, old.start_time_s) != (info.pid, info.start_time_s):
            log.warning("haproxy_restarted", haproxy=target, old_pid=old.pid, pid=info.pid)
            return True
        if was_down:
            log.info("haproxy_reachable", haproxy=target, pid=info.pid)
            return True
        return False

    def _log_summary(self, r: PassResult) -> None:
        commands = sum(len(o.results) for o in r.haproxies)
        failed = sum(1 for o in r.haproxies for x in o.results if not x.ok)
        undecided = [d.name for d in r.decisions if d.master is None]
        drift_after = sum(o.drift_after or 0 for o in r.haproxies)
        unverified = sum(1 for o in r.haproxies if o.drift_after is None)
        errors = [o.target for o in r.haproxies if o.error]
        quiet = not (commands or undecided or drift_after or unverified or errors)
        fields = dict(
            trigger=r.trigger,
            duration_ms=round(r.duration_ms, 2),
            sentinels_ok=sum(1 for v in r.views if v.usable),
            sentinels=len(r.views),
            groups=len(r.decisions),
            undecided=len(undecided),
            commands=commands,
            failed=failed,
            drift_after=drift_after,
            unverified=unverified,
            haproxy_errors=len(errors),
        )
        # Quiet periodic passes are debug: an idle cluster should not fill the log.
        if quiet and r.trigger == "resync":
            log.debug("pass", **fields)
        else:
            log.info("pass", **fields)

    def _note_hint(self, h: Hint) -> bool:
        """Log a hint; True when it warrants a pass."""
        if h.kind == "connected":
            log.info("sentinel_connected", sentinel=h.sentinel)
            return True
        if h.kind == "disconnected":
            log.warning("sentinel_disconnected", sentinel=h.sentinel, error=h.detail)
            return True
        if h.kind == "bad_event":
            log.warning("bad_event", sentinel=h.sentinel, error=h.detail)
            return False
        ev = h.event
        if ev is None:
            return False
        wanted = self.settings.masters
        if wanted and ev.master is not None and ev.master not in wanted:
            return False
        master_down = ev.channel == "+sdown" and ev.text.startswith("master")
        if ev.channel in FAILOVER_EVENTS or master_down:
            if self._incident_t0 is None or h.received - self._incident_last > INCIDENT_QUIET_S:
                self._incident_t0 = h.received
            self._incident_last = h.received
        if ev.relevant:
            log.info("sentinel_event", sentinel=h.sentinel, channel=ev.channel, text=ev.text,
                     **self._t())
            return True
        log.debug("sentinel_event", sentinel=h.sentinel, channel=ev.channel, text=ev.text)
        return False

    # -- the loop --------------------------------------------------------------------
    def probe_haproxies(self) -> bool:
        """Cheap `show info` on each HAProxy; True when one restarted, reloaded or came back."""
        changed = False
        for h in self.haproxies:
            try:
                info = h.info()
            except HAProxyError as e:
                self._haproxy_down(h.target, str(e))
                continue
            if info.stopping or self._haproxy_seen(h.target, info):
                changed = True
        return changed

    def run(self, stop: threading.Event) -> None:
        for w in self.watchers:
            w.start()
        try:
            self.prime()
        except Exception:
            log.exception("unexpected_error", where="prime")
        s = self.settings
        next_resync = time.monotonic()  # first pass at once
        next_probe = time.monotonic() + s.haproxy_poll_interval_s
        next_role = 0.0
        next_lease = 0.0
        while not stop.is_set():
            try:
                now = time.monotonic()
                renew_every = min(0.25, self.lease_ttl_s / 4)
                wake = min(next_resync, next_probe, next_lease)
                if self.promotions_pending():
                    wake = min(wake, next_role)
                if self.roster is not None:
                    wake = min(wake, self.roster.next_due())
                hints = self.hints.get(max(0.0, wake - now))
                trigger = ""
                since: float | None = None
                for h in hints:
                    if self.roster is not None:
                        self.roster.hint(h)
                    if self._note_hint(h) and not trigger:
                        trigger = h.event.channel if h.event else f"sentinel_{h.kind}"
                        since = h.received
                if self.hints.take_overflow():
                    trigger = trigger or "hint_overflow"
                now = time.monotonic()
                if now >= next_lease or self._push_lease_now:
                    self._push_lease_now = False
                    next_lease = now + renew_every
                    if self.renew_lease():
                        trigger = trigger or "write_lease"
                if not trigger and self.promotions_pending() and now >= next_role:
                    next_role = now + s.promotion_poll_interval_s
                    if self.poll_promotions():
                        trigger, since = "role_master", time.monotonic()
                if not trigger and now >= next_probe:
                    next_probe = now + s.haproxy_poll_interval_s
                    if self.probe_haproxies():
                        trigger = "haproxy_changed"
                if not trigger and self.roster is not None:
                    trigger = self.roster.due()
                if not trigger and now >= next_resync:
                    trigger = "resync"
                if trigger:
                    self.reconcile(trigger, since=since, apply=not s.dry_run)
                    next_resync = time.monotonic() + s.resync_interval_s
                    if trigger in ("resync", "sentinel_connected"):
                        self.discover()  # after the pass: it needs the Sentinels' IDs
            except Exception:
                log.exception("unexpected_error", where="loop")
                stop.wait(0.1)  # never spin on a persistent bug
        for w in self.watchers:
            w.stop()


def _admin(state: HAProxyState) -> dict[tuple[str, str], AdminState]:
    return {(be, name): srv.admin for be, servers in state.backends.items()
            for name, srv in servers.items()}


def _admin_changes(
    left: dict[tuple[str, str], AdminState] | None, state: HAProxyState
) -> set[tuple[str, str]]:
    """Servers whose admin state differs from `left` (none when there is nothing to compare)."""
    if left is None:
        return set()
    now = _admin(state)
    return {k for k, v in now.items() if k in left and left[k] != v}
