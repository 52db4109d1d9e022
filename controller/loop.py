"""The level-triggered reconcile loop.

A pass reads Sentinels -> `decide` per group -> hands each HAProxy's worker the wanted state
(`haproxy_worker`: read, plan, apply, verify, per HAProxy in its own thread). Two kinds:

- a targeted pass reads only the groups its hints name (a Sentinel event about a master, its
  replicas or its failover, the replica being promoted answering ROLE master): its cost does
  not grow with the fleet;
- a full pass reads every Sentinel's TILT state, ID and groups, then every group, in chunks:
  on start, on every Sentinel (re)connect or loss, when an HAProxy restarts, reloads or comes
  back, on hints that name no group (`+new-epoch` aside: logged only), when the write lease
  expires or is renewed, and every `resync_interval_s`. It is the safety net: the only pass
  that can find drift anywhere.

With a roster (`roster`) the Sentinels' answers have their hostnames resolved before deciding,
replicas their lists miss right after `+slave` are filled in after it, and it asks for
re-check passes of the groups a `+slave` (or the like) named, and for a full pass when a
node's name resolves elsewhere.

Hints that arrive while a pass runs are merged per group into the next pass (`pending`);
targeted passes go before the rest of a full pass. A hint about a group that a read asked for
after the hint arrived needs no pass: that read answers it (a full pass's chunk then hands the
group over as a targeted pass would, its latency counted from the hint). A pass asks every
Sentinel at once and goes on as soon as the answers settle every group it reads
(`decide.decidable`); when the answers it did not wait for would change a verdict, the group
is passed again with them. Events only shorten the wait; a missed event changes nothing. The
loop never dies from a bug: it logs `unexpected_error` and goes on.
Must not talk to Sentinel, HAProxy or Redis nodes except through their adapters.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from controller import lease
from controller.counters import Counters
from controller.decide import History, Rules, decidable, decide
from controller.haproxy_old_workers import HAProxyMasterTarget, OldWorkers
from controller.haproxy_worker import HAProxyOutcome, HAProxyTarget, HAProxyWorker
from controller.model import Address, Decision, SentinelView
from controller.pending import Batch, Pending
from controller.plan import BackendTarget, targets
from controller.redis_nodes import NodeError, NodeQuiet, RoleAsker
from controller.roster import Roster
from controller.sentinel import Enough, Hint, HintQueue, OnLate
from controller.sentinel_parse import FAILOVER_EVENTS, TIMELINE_EVENTS
from controller.settings import Settings

__all__ = ["Controller", "Counters", "HAProxyOutcome", "HAProxyTarget", "PassResult"]

log = structlog.get_logger("controller")

INCIDENT_QUIET_S = 30.0  # a failover timeline ends after this long without failover events
TARGETED_MAX = 64  # groups read by one targeted pass at most (a burst: a few passes)
# Events that only say the leader goes on promoting the replica it chose (`_followed`).
PROMOTION_STEPS = frozenset({"+selected-slave", "+failover-state-send-slaveof-noone",
                             "+failover-state-wait-promotion"})
# After a targeted pass the full pass in progress waits (at most HOLD_FULL_S; a worker wakes
# the loop when it is done) until the HAProxy workers have applied its commands.
HOLD_FULL_S = 0.02
HOLD_LOGS_S = 0.005  # the same for the targeted pass's own log lines, shorter
# Groups per step of a full pass: a failover waits for one chunk at most. 2 rather than 8:
# -2 ms at p99 at 1,000 groups, for ~50 % more CPU per full pass (bench/RESULTS.md).
FULL_CHUNK = 2
# Groups per read of the start-up discovery (`prime`), which waits for every Sentinel on each
# read: a Sentinel 500 ms slow costs that per read (1,000 groups: 62 s in reads of 8, where
# reads of 2 would take 250 s); larger reads raise the peak RSS.
PRIME_CHUNK = 8
LATE_ROUNDS_KEPT = 4096  # early verdicts kept for comparing late answers (bounded)
LATE_POLL_S = 0.001  # while Sentinel answers are awaited, take them in this often
# Sentinel sends `REPLICAOF NO ONE` within a timer tick or two of choosing the replica
# (`+selected-slave`); a watch still waiting after this long asks ten times less often.
PROMOTION_FAST_S = 1.0


class SentinelSource(Protocol):
    """What the loop needs from the Sentinel side (`sentinel.SentinelReader`)."""

    @property
    def master_names(self) -> list[str]: ...

    def head(self, skip: Collection[str] = (), patient: bool = False,
             on_late: OnLate | None = None) -> list[SentinelView]: ...

    def read(
        self,
        groups: Sequence[str],
        skip: Collection[str] = (),
        prefill: dict[str, SentinelView] | None = None,
        enough: Enough | None = None,
        on_late: OnLate | None = None,
        discover: bool = False,
    ) -> list[SentinelView]: ...

    def discover(self) -> list[Address]: ...

    def busy(self) -> bool: ...

    def poll(self) -> None: ...


class NodeRoles(RoleAsker, Protocol):
    """What the loop needs from Redis nodes (`redis_nodes.RedisNodes`): the roster's ROLE
    sweep, and dropping the connections of nodes no longer watched."""

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
class Promotion:
    """A replica the failover leader is promoting, watched until it answers ROLE master."""

    addr: Address
    until: float  # monotonic: the group's failover timeout after it was first seen
    since: float = field(default_factory=time.monotonic)  # monotonic: the watch started
    is_master: bool = False
    error: str = ""  # last ROLE failure, logged once
    leaders: frozenset[str] = frozenset()  # Sentinels whose answers name it: awaited by passes


@dataclass(frozen=True)
class PassResult:
    """A whole pass run by `reconcile()` (the command line, tests): HAProxy synced inline."""

    trigger: str
    views: tuple[SentinelView, ...]
    decisions: tuple[Decision, ...]
    haproxies: tuple[HAProxyOutcome, ...]
    duration_ms: float


@dataclass
class _Early:
    """A verdict taken before every Sentinel answered, kept to compare the late answers."""

    groups: list[str]
    keys: dict[str, tuple[object, ...]]
    answered: set[str]  # Sentinels whose answers it used


@dataclass
class _FullPass:
    """A full pass in progress, one chunk of groups per step."""

    trigger: str
    since: float
    started: float
    groups: list[str]
    head: list[SentinelView]
    done: int = 0
    undecided: int = 0
    members: int = 0
    down_after_ms: list[int] = field(default_factory=list)
    sentinels_s: float = 0.0  # waited for Sentinel rounds (head and chunks)


def _padded(masters: Sequence[HAProxyMasterTarget | None], n: int
            ) -> list[HAProxyMasterTarget | None]:
    """`masters` as long as the HAProxy list: None for those it does not name."""
    return [*masters[:n], *[None] * (n - len(masters))]


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
        haproxy_masters: Sequence[HAProxyMasterTarget | None] = (),
    ) -> None:
        """`haproxy_masters`: the master CLI of each of `haproxies` (same order; None or
        missing: none)."""
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
        self._applied = threading.Condition()  # a worker synced hinted groups (`applied`)
        self._holding = False  # the loop holds a full pass back until the workers applied
        self.counters = Counters()
        self.write_servers = self.counters.write_servers  # (haproxy, group) -> ready servers
        self.on_change = on_change  # webhook/alert hook; must not block
        self.workers = [
            HAProxyWorker(h, self.counters, self, settings.haproxy_poll_interval_s,
                          apply=not settings.dry_run, lease_map=settings.write_lease_map,
                          write_lease=settings.write_lease,
                          state_file=None if settings.dry_run
                          else settings.state_file_for(h.target),
                          old_workers=None if m is None else OldWorkers(m, h.target))
            for h, m in zip(self.haproxies, _padded(haproxy_masters, len(self.haproxies)),
                            strict=True)
        ]
        self._decisions: dict[str, Decision] = {}  # last decided verdict per group
        self._undecided: dict[str, str] = {}  # group -> reason, while undecided
        self._epochs: dict[str, int] = {}  # highest config-epoch acted on, per group
        self._readers: dict[str, frozenset[Address]] = {}  # replicas serving reads, per group
        self.promotions: dict[str, Promotion] = {}  # group -> replica being promoted
        self.sentinel_states: dict[str, str] = {}  # address -> ok, tilt, unreachable, ...
        # The write lease (controller/lease.py): valid until (monotonic); one TTL of grace
        # from the start, so that a restarted controller does not fence working writes.
        self.lease_ttl_s = lease.ttl_for([], settings.write_lease_ttl_s)
        self.lease_until: float | None = time.monotonic() + self.lease_ttl_s
        self._lease_expired_logged = False
        self._members = 0  # Sentinels of the groups, as they report (num-other-sentinels + 1)
        self._push_lease_now = True
        # HAProxy gets a lease only once every group was synced by a full pass: a running one
        # may hold the states of before this controller started (or, restarted meanwhile,
        # its server-state file's), and the lease would let writes reach a stale master.
        self._full_pass_done = False
        self._duplicates: set[frozenset[str]] = set()  # address sets already reported
        self._incident_t0: float | None = None
        self._incident_last = 0.0
        self._rounds = itertools.count(1)
        self._early: dict[int, _Early] = {}
        self._deferred: list[tuple[str, dict[str, object]]] = []  # see _flush_logs
        self._asked: dict[str, float] = {}  # group -> when the Sentinels were last asked
        self._round_s = 0.0  # the last Sentinel round: asked -> answers decidable (or all in)

    # -- reading and deciding ------------------------------------------------------------
    def prime(self) -> None:
        """Before the first pass: learn the Sentinels' IDs and groups and find the Sentinels
        not configured, so that the first verdict already counts every Sentinel."""
        self.reader.head(self._skip(), patient=True)
        names = self.reader.master_names
        for i in range(0, len(names), PRIME_CHUNK):  # in chunks: a big fleet's replies at once
            self.reader.read(names[i:i + PRIME_CHUNK], self._skip(), discover=True)  # peak RSS
        self.discover()

    def discover(self) -> None:
        """Watch and read the groups' other Sentinels that reads with discovery found (one
        configured Sentinel is enough to start)."""
        for addr in self.reader.discover():
            log.info("sentinel_discovered", sentinel=str(addr))
            if self.new_watcher is not None:
                w = self.new_watcher(addr)
                self.watchers.append(w)
                w.start()

    def _skip(self) -> set[str]:
        """Sentinels whose event connection is known dead (e.g. hung): not asked, a hung one
        would hold a read for a whole timeout."""
        return {str(w.addr) for w in self.watchers if not w.connected and w.last_error}

    def observe(self, groups: Sequence[str] | None = None) -> tuple[list[SentinelView],
                                                                    list[Decision]]:
        """Read and decide `groups` (None: a full read, heads first), waiting for every
        Sentinel; verdicts recorded, nothing handed to HAProxy."""
        if groups is None:
            self._note_sentinels(self.reader.head(self._skip(), patient=True))
            groups = self.reader.master_names
        views, decisions = self._read_decide(list(groups), None, early=False)
        self._note_decisions(decisions, "observe")
        return views, decisions

    def _read_decide(
        self, groups: list[str], prefill: dict[str, SentinelView] | None, early: bool,
        discover: bool = False,
    ) -> tuple[list[SentinelView], list[Decision]]:
        """Ask every Sentinel about `groups` and decide them. With `early`, go on once the
        answers settle every group; late answers come back as a `late_answer` hint."""
        n = self.settings.min_sentinels or None
        seq = next(self._rounds)
        enough: Enough | None = None
        on_late: OnLate | None = None
        skip = self._skip()
        if early:
            # While a promotion is watched only the leader's answer names the replica: a pass
            # about the group waits for it (the others' answers alone would fence again).
            leaders = {s for g in groups if (p := self.promotions.get(g)) for s in p.leaders}

            def enough(views: list[SentinelView], pending: int) -> bool:
                if leaders and not leaders <= {v.sentinel for v in views} | skip:
                    return False
                return all(decidable(g, views, pending, n, self._decisions.get(g),
                                     self._history(g), self.rules) for g in groups)

            def on_late(views: list[SentinelView]) -> None:
                self.hints.put(Hint("", "late_answer", time.monotonic(), detail=str(seq),
                                    views=tuple(views)))
        asked = time.monotonic()
        views = self.reader.read(groups, skip, prefill, enough, on_late, discover)
        self._round_s = time.monotonic() - asked
        for g in groups:
            self._asked[g] = asked
        self._note_sentinels(views)
        if self.roster is not None:
            views = self.roster.normalize(views)
        decisions = [decide(g, views, n, self._history(g), self.rules) for g in groups]
        if early and any(v.problem == "pending" for v in views):
            if len(self._early) >= LATE_ROUNDS_KEPT:
                del self._early[next(iter(self._early))]
            self._early[seq] = _Early(groups, {d.name: _key(d) for d in decisions},
                                      {v.sentinel for v in views if v.problem != "pending"})
        if self.roster is not None:  # after the keys: `_late` compares unadjusted verdicts
            decisions = [self.roster.adjust(d, views, self._readers.get(d.name, frozenset()))
                         for d in decisions]
        for d in decisions:
            if d.master is not None:
                self._epochs[d.name] = d.epoch  # >= the old one, or agreed by all
                self._readers[d.name] = d.replicas | d.paused
            self._watch_promotion(d, views)
        if self.nodes is not None:
            self.nodes.forget({p.addr for p in self.promotions.values()})
        if any(v.usable for v in views):
            self.counters.last_pass_ok = time.monotonic()
        return views, decisions

    def _hand_over(self, decisions: Sequence[Decision], trigger: str,
                   since: Mapping[str, float] | float, urgent: bool, last: bool = True) -> None:
        """Give every HAProxy worker the groups' wanted state, then log the verdict changes;
        `since`: when the hint each group answers arrived (its latency counts from there).
        `last`: no other hand-over of the pass follows (held replicas are asked after it)."""
        routed = self._fenced_by_lease(decisions) if self.lease_expired() else decisions
        wanted, _undecided_notes = targets(  # undecided: logged by _note_decisions
            routed, self.settings.write_backend, self.settings.read_backend,
            self.settings.read_fallback_to_master, self.settings.slot_prefix,
        )
        by_group: dict[str, tuple[BackendTarget, ...]] = {d.name: () for d in decisions}
        for t in wanted:
            by_group[t.group] += (t,)
        sinces = since if isinstance(since, Mapping) else dict.fromkeys(by_group, since)
        for w in self.workers:
            w.want(by_group, sinces, urgent)
        if urgent:  # the workers have the GIL now: logging can wait, HAProxy cannot
            with self._applied:
                self._applied.wait_for(lambda: not self._applying(), HOLD_LOGS_S)
        self._flush_logs()
        self._note_decisions(decisions, trigger)
        if self.roster is not None and last:  # held replicas: asked after the hand-over
            self.roster.ask_held()

    # -- passes --------------------------------------------------------------------------
    def reconcile(self, trigger: str, groups: Sequence[str] | None = None,
                  since: float | None = None, apply: bool = True) -> PassResult:
        """One whole pass now, in this thread (the command line, tests): every Sentinel
        waited for, every HAProxy synced inline. `groups` None: a full pass."""
        start = time.monotonic()
        waited = 0.0  # for the Sentinels
        full = groups is None
        if groups is None:
            head = self.reader.head(self._skip(), patient=True)
            waited = time.monotonic() - start
            self._note_sentinels(head)
            groups = self.reader.master_names
        views, decisions = self._read_decide(list(groups), None, early=False)
        waited += self._round_s
        usable = [m for v in views if v.usable for m in v.masters.values()]
        self._set_members(max((m.other_sentinels + 1 for m in usable), default=0),
                          [m.down_after_ms for m in usable if m.down_after_ms > 0])
        self._hand_over(decisions, trigger, since or start, urgent=True)
        outcomes: list[HAProxyOutcome] = []
        for w in self.workers:
            w.apply = apply and not self.settings.dry_run
            outcomes += w.drain(full_read=True)
        self.counters.passes += 1
        if full:
            self._forget_gone()
            self._full_pass_done = True
        result = PassResult(trigger, tuple(views), tuple(decisions), tuple(outcomes),
                            (time.monotonic() - start) * 1000)
        self._log_pass(trigger, "full" if len(groups) == len(self.reader.master_names)
                       else "groups", len(decisions), result.duration_ms, views,
                       sum(1 for d in decisions if d.master is None), waited * 1000)
        return result

    def _targeted(self, batch: Batch) -> None:
        """A pass over the groups hints named: read, decide, hand over (urgent)."""
        start = time.monotonic()
        groups = list(batch.groups)
        for w in self.workers:
            w.prefetch(groups)
        views, decisions = self._read_decide(groups, batch.carry or None, early=True)
        waited = self._round_s
        self._hand_over(decisions, batch.trigger, batch.groups, urgent=True)
        self.counters.passes += 1
        self._log_pass(batch.trigger, "groups", len(groups), (time.monotonic() - start) * 1000,
                       views, sum(1 for d in decisions if d.master is None), waited * 1000)

    def _start_full(self, trigger: str, since: float) -> _FullPass:
        def on_late(views: list[SentinelView]) -> None:  # called in this thread, by the reader
            self._note_sentinels(views)  # TILT or trouble, logged when known
            p.head = views
        started = time.monotonic()
        head = self.reader.head(self._skip(), on_late=on_late)
        self._note_sentinels(head)
        p = _FullPass(trigger, since, started, self.reader.master_names, head,
                      sentinels_s=time.monotonic() - started)
        return p

    def _full_step(self, p: _FullPass, work: Pending) -> bool:
        """The next chunk of a full pass; True when the pass is over. One chunk per pass also
        asks each group's other Sentinels (discovery), a different chunk each pass: the
        groups usually share their Sentinels, and asking for all of them every pass would cost
        as much as reading them."""
        chunk = p.groups[p.done:p.done + FULL_CHUNK]
        if chunk:
            chunks = -(-len(p.groups) // FULL_CHUNK)
            discover = p.done // FULL_CHUNK == self.counters.passes % chunks
            views, decisions = self._read_decide(chunk, None, early=True, discover=discover)
            p.sentinels_s += self._round_s
            # An event about a chunk's group that came just before the chunk asked is answered
            # by this read (`_take` drops it): its group goes over as a targeted pass's would,
            # its latency counted from the event, not from the start of the full pass.
            answered = self._take_queued(work)
            hinted = [d for d in decisions if d.name in answered]
            rest = [d for d in decisions if d.name not in answered]
            if hinted:
                first = min((answered[d.name] for d in hinted), key=lambda a: a[0])
                self._hand_over(hinted, first[1], {d.name: answered[d.name][0] for d in hinted},
                                urgent=True, last=not rest)
            if rest:
                self._hand_over(rest, p.trigger, p.since, urgent=False)
            p.done += len(chunk)
            p.undecided += sum(1 for d in decisions if d.master is None)
            for v in views:
                if v.usable:
                    for m in v.masters.values():
                        p.members = max(p.members, m.other_sentinels + 1)
                        if m.down_after_ms > 0:
                            p.down_after_ms.append(m.down_after_ms)
        if p.done < len(p.groups):
            return False
        self.reader.poll()  # late head answers that came meanwhile count in the summary
        self._forget_gone()
        self._set_members(p.members, p.down_after_ms)
        self.counters.passes += 1
        self._log_pass(p.trigger, "full", len(p.groups), (time.monotonic() - p.started) * 1000,
                       p.head, p.undecided, p.sentinels_s * 1000)
        self.discover()
        return True

    def _forget_gone(self) -> None:
        """After a full pass: groups no Sentinel monitors any more (`SENTINEL REMOVE`
        everywhere) lose every trace, so that none stays undecided (and `/healthz`
        unhealthy) for ever, and an HAProxy restart does not bring back their last state.
        Their backends stay as they are."""
        groups = (set(self._decisions) | set(self._undecided)) - set(self.reader.master_names)
        for g in sorted(groups):
            log.info("group_forgotten", group=g,
                     detail="no Sentinel monitors it any more; its HAProxy backends are left "
                     "as they are")
            for d in (self._decisions, self._undecided, self.counters.undecided_since,
                      self.promotions, self._epochs, self._readers, self._asked):
                d.pop(g, None)
        if groups:
            self.counters.undecided = set(self._undecided)
            for w in self.workers:
                w.forget(groups)

    def _hold_full(self, until: float) -> bool:
        """Whether the next chunk of a full pass waits: the commands of a targeted pass are
        being applied, and a chunk would compete with them for the GIL. Bounded by `until`
        (a hung HAProxy must not hold the loop); the loop then waits for hints, and the
        worker's `applied` hint ends the wait."""
        return time.monotonic() < until and self._applying()

    def _applying(self) -> bool:
        """A worker thread still has hinted groups to apply."""
        return any(w.threaded and w.urgent_pending() for w in self.workers)

    def _set_members(self, members: int, down_after_ms: list[int]) -> None:
        if members:
            self._members = members
            self.lease_ttl_s = lease.ttl_for(down_after_ms, self.settings.write_lease_ttl_s)

    def _late(self, h: Hint, work: Pending) -> None:
        """The complete answers of a round a pass did not wait for: pass again the groups
        whose verdict they change, counting the late answers until their Sentinel answers
        again (asking it again would only bring the same delay)."""
        early = self._early.pop(int(h.detail), None)
        if early is None:
            return
        views = list(h.views)
        self._note_sentinels(views)
        if self.roster is not None:
            views = self.roster.normalize(views)
        n = self.settings.min_sentinels or None
        late = {v.sentinel: v for v in views
                if v.sentinel not in early.answered and v.error is None}
        for g in early.groups:
            d = decide(g, views, n, self._history(g), self.rules)
            if _key(d) != early.keys.get(g):
                log.info("late_answer_changes_verdict", group=g, sentinels=sorted(late))
                work.group(g, "late_answer", h.received, late)

    # -- the loop --------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        for w in self.watchers:
            w.start()
        for hw in self.workers:
            hw.start()
        try:
            self.prime()
        except Exception:
            log.exception("unexpected_error", where="prime")
        s = self.settings
        work = Pending()
        work.full("start", time.monotonic())
        full: _FullPass | None = None
        next_resync = float("inf")  # set when the first full pass is over
        next_role = 0.0
        next_lease = 0.0
        hold_full_until = 0.0
        while not stop.is_set():
            try:
                now = time.monotonic()
                # Set before asking the workers: one that finishes meanwhile sends `applied`.
                self._holding = full is not None and not work.has_groups and now < hold_full_until
                self._holding = self._holding and self._hold_full(hold_full_until)
                busy = (work.has_groups or work.has_full or full is not None) and not self._holding
                wake = min(next_resync, next_lease,
                           hold_full_until if self._holding else float("inf"))
                if self.promotions_pending():
                    wake = min(wake, next_role)
                if self.reader.busy():  # late answers: take them in soon
                    wake = min(wake, now + LATE_POLL_S)
                if self.roster is not None:
                    wake = min(wake, self.roster.next_due())
                self._take_queued(work, 0.0 if busy else max(0.0, wake - now))
                self.reader.poll()  # late answers come back as hints
                now = time.monotonic()
                if self.hints.take_overflow():
                    work.full("hint_overflow", now)
                if now >= next_lease or self._push_lease_now:
                    self._push_lease_now = False
                    next_lease = now + min(0.25, self.lease_ttl_s / 4)
                    if self.renew_lease():
                        work.full("write_lease", now)
                if self.promotions_pending() and now >= next_role:
                    for g in self.poll_promotions():
                        work.group(g, "role_master", time.monotonic())
                    # Counted from the sweep's end: the loop keeps time for its other work
                    # however many replicas are being promoted at once.
                    next_role = time.monotonic() + self.promotion_poll_s()
                if self.roster is not None and (extra := self.roster.due()):
                    rechecked = self.roster.recheck_groups if extra == "recheck" else set()
                    for g in rechecked:
                        work.group(g, extra, now)
                    if not rechecked:
                        work.full(extra, now)
                if now >= next_resync:
                    next_resync = float("inf")
                    work.full("resync", now)
                batch = work.take_groups(TARGETED_MAX)
                if batch is not None:
                    self._targeted(batch)
                    hold_full_until = time.monotonic() + HOLD_FULL_S
                elif full is not None and self._hold_full(hold_full_until):
                    pass
                elif full is not None:
                    if self._full_step(full, work):
                        full = None
                        next_resync = time.monotonic() + s.resync_interval_s
                        if not self._full_pass_done:
                            self._full_pass_done = self._push_lease_now = True
                elif (due := work.take_full()) is not None:
                    full = self._start_full(*due)
                self._flush_logs()
            except Exception:
                log.exception("unexpected_error", where="loop")
                # The work in hand is lost: a full pass finds whatever it was about. Not at
                # once (a chunk that raises would raise again), but the periodic resync
                # keeps its schedule whatever step raised.
                full = None
                next_resync = min(next_resync, time.monotonic() + s.resync_interval_s)
                stop.wait(0.1)  # never spin on a persistent bug
        for w in self.watchers:
            w.stop()
        for hw in self.workers:
            hw.stop()

    def _take_queued(self, work: Pending, wait_s: float = 0.0) -> dict[str, tuple[float, str]]:
        """Merge the hints queued (waiting up to `wait_s` for one) into the work to do;
        returns the groups of those a read already answered: group -> (earliest such hint,
        its trigger)."""
        answered: dict[str, tuple[float, str]] = {}
        for h in self.hints.get(wait_s):
            if self.roster is not None:
                self.roster.hint(h)
            done = self._take(h, work)
            if done is not None and (done[0] not in answered
                                     or h.received < answered[done[0]][0]):
                answered[done[0]] = (h.received, done[1])
        return answered

    def _take(self, h: Hint, work: Pending) -> tuple[str, str] | None:
        """Merge one hint into the work to do. (group, trigger) when the hint needs no pass
        because the Sentinels were asked about its group after it arrived."""
        if h.kind == "late_answer":
            self._late(h, work)
            return None
        if h.kind == "applied":  # only ends a wait
            return None
        what = self._classify(h)
        if what is None:
            return None
        trigger, group = what
        if group is None:
            work.full(trigger, h.received)
        elif h.received < self._asked.get(group, 0.0):
            # The Sentinels were asked about the group after this hint arrived: that read saw
            # what the event says (the same event from each Sentinel is one pass, not three).
            return group, trigger
        elif self._followed(h, group) or self._left_to_rechecks(h):
            return None
        else:
            work.group(group, trigger, h.received)
        return None

    def _followed(self, h: Hint, group: str) -> bool:
        """An event the verdict acted on already says: a `+switch-master` to the master whose
        writes HAProxy already gets (another Sentinel's copy of an event a pass answered), or
        a step of the promotion of the replica the verdict already names as promoting. Another
        pass would find nothing new and only compete for the CPU with the HAProxy worker, and
        with the clients reconnecting after Sentinel's `CLIENT KILL` on that replica (its
        `SLAVEOF NO ONE` closes every connection it has in the same moment)."""
        d = self._decisions.get(group)
        ev = h.event
        if ev is None or d is None:
            return False
        if ev.switched_to is not None:
            return not d.fenced and ev.switched_to == d.master
        return (ev.channel in PROMOTION_STEPS and d.promoting is not None
                and ev.instance == d.promoting)

    def _left_to_rechecks(self, h: Hint) -> bool:
        """A `+slave` when there is a roster: the Sentinel publishes it before it has the
        replica's INFO (an entry that counts for nothing yet), and the roster's re-check passes
        (the first `recheck_interval_s` later) find its link. Each Sentinel publishes it in a
        burst right as the leader's `SLAVEOF` closes the connections of the replica it
        reconfigures: a pass then only competes for the CPU with the readers reconnecting
        (drill: their next read after the cut). Without a roster nothing re-checks: passed."""
        ev = h.event
        return ev is not None and ev.channel == "+slave" and self.roster is not None

    def _classify(self, h: Hint) -> tuple[str, str | None] | None:
        """Log a hint; what it warrants: (trigger, group) for a targeted pass, (trigger, None)
        for a full pass, None for no pass."""
        if h.kind == "connected":
            log.info("sentinel_connected", sentinel=h.source)
            return "sentinel_connected", None
        if h.kind == "disconnected":
            log.warning("sentinel_disconnected", sentinel=h.source, error=h.detail)
            return "sentinel_disconnected", None
        if h.kind == "haproxy_changed":
            return "haproxy_changed", None
        if h.kind == "bad_event":
            log.warning("bad_event", sentinel=h.source, error=h.detail)
            return None
        ev = h.event
        if ev is None:
            return None
        wanted = self.settings.masters
        if wanted and ev.master is not None and ev.master not in wanted:
            return None
        master_down = ev.channel == "+sdown" and ev.text.startswith("master")
        if ev.channel in FAILOVER_EVENTS or master_down:
            if self._incident_t0 is None or h.received - self._incident_last > INCIDENT_QUIET_S:
                self._incident_t0 = h.received
            self._incident_last = h.received
        if not ev.relevant and ev.channel not in TIMELINE_EVENTS:
            log.debug("sentinel_event", sentinel=h.source, channel=ev.channel, text=ev.text)
            return None
        # Logged once the pass it starts has handed HAProxy its commands (`_flush_logs`): a
        # log line costs as much as reading a Sentinel. The line keeps its own time.
        self._deferred.append(("sentinel_event", dict(
            sentinel=h.source, channel=ev.channel, text=ev.text, **self.timeline(h.received))))
        if not ev.relevant:
            return None
        if ev.master is None or ev.master not in self.reader.master_names:
            return ev.channel, None  # no group named, or one not known yet
        return ev.channel, ev.master

    def probe_haproxies(self) -> bool:
        """`show info` on each HAProxy now; True when one restarted, reloaded or came back."""
        return any([w.probe() for w in self.workers])

    # -- what workers call (haproxy_worker.Hooks) -----------------------------------------
    def timeline(self, at: float | None = None) -> dict[str, float]:
        """Elapsed ms in the current failover timeline (at `at`, default now), when one is
        open."""
        now = time.monotonic() if at is None else at
        if self._incident_t0 is None or now - self._incident_last > INCIDENT_QUIET_S:
            return {}
        return {"t_ms": round((now - self._incident_t0) * 1000, 1)}

    def _flush_logs(self) -> None:
        """Write the lines deferred while a pass was on its way to HAProxy."""
        lines, self._deferred = self._deferred, []
        for event, fields in lines:
            log.info(event, **fields)

    def emit(self, kind: str, data: dict[str, object]) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(kind, data)
        except Exception:  # an alert hook must never break the control path
            log.exception("unexpected_error", where="on_change hook")

    def haproxy_changed(self, target: str) -> None:
        self.hints.put(Hint(target, "haproxy_changed", time.monotonic()))

    def applied(self) -> None:
        """A worker synced its hinted groups: wake a hand-over waiting for it (`_hand_over`)
        and a full pass held back for it (the loop waits for hints then)."""
        with self._applied:
            self._applied.notify_all()
        if self._holding:
            self.hints.put(Hint("", "applied", time.monotonic()))

    # -- bookkeeping and logs ---------------------------------------------------------
    def _note_sentinels(self, views: Sequence[SentinelView]) -> None:
        """One line when a Sentinel's state changes (ok, tilt, unreachable, auth, not a
        Sentinel, bad reply), and once for a Sentinel listed under several addresses."""
        for v in views:
            if v.problem == "pending":  # no answer yet: nothing known about it
                continue
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
                            error=v.error or "TILT mode: its state is not trusted",
                            **self.timeline())
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
        out = dict(self._decisions)  # copies: the loop thread changes them meanwhile
        for group, reason in dict(self._undecided).items():
            out[group] = Decision(name=group, master=None, reason=reason)
        return out

    # -- the write lease ---------------------------------------------------------------
    def renew_lease(self) -> bool:
        """Hand the lease to every HAProxy worker (pushed into its lease map); True when it
        just expired or came back (the caller then runs a full pass: it fences, or unfences,
        the writes)."""
        now = time.monotonic()
        if self.settings.write_lease:
            pongs = [w.last_pong for w in self.watchers if w.connected]
            members = self._members or len(self.watchers)
            until = lease.valid_until(pongs, members, self.lease_ttl_s,
                                      self.settings.min_sentinels)
            if until is not None and (self.lease_until is None or until > self.lease_until):
                self.lease_until = until
            value_ms = (time.time() + ((self.lease_until or now) - now)) * 1000
        else:
            value_ms = (time.time() + 10 * 365 * 86400) * 1000  # off: never expires
        if self._full_pass_done:
            for w in self.workers:
                w.set_lease(str(int(value_ms)))
        expired = self.lease_expired()
        changed = expired != self._lease_expired_logged
        if expired and changed:
            log.warning("write_lease_expired", ttl_s=self.lease_ttl_s,
                        detail="no majority of Sentinels heard: new writes refused by HAProxy, "
                        "write backends fenced", **self.timeline())
            # Fence now, from the last verdicts: HAProxy's lease rule refuses new connections
            # by itself, but established ones keep writing until their server is in maint,
            # and the full pass that follows may wait for the Sentinels that are missing.
            if self._decisions:
                self._hand_over(list(self._decisions.values()), "write_lease",
                                time.monotonic(), urgent=True)
        elif changed:
            log.info("write_lease_renewed", ttl_s=self.lease_ttl_s)
        self._lease_expired_logged = expired
        return changed

    def lease_expired(self) -> bool:
        return (self.settings.write_lease
                and (self.lease_until is None or time.monotonic() > self.lease_until))

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

    def _watch_promotion(self, d: Decision, views: Sequence[SentinelView] = ()) -> None:
        """Start watching the replica a leader promotes (`views`: the answers that named
        it); stop when the verdict no longer names it (promoted and confirmed, or the failover
        aborted: fenced again)."""
        p = self.promotions.get(d.name)
        if d.promoting is None or not self.rules.early_promotion:
            if p is not None:
                self.promotions.pop(d.name)
                log.info("promotion_watch_ended", group=d.name, replica=str(p.addr),
                         outcome="confirmed by Sentinel" if d.master == p.addr
                         else "no longer promoted (failover aborted or leader lost)",
                         **self.timeline())
            return
        leaders = frozenset(v.sentinel for v in views
                            if (m := v.masters.get(d.name)) and m.promoting == d.promoting)
        if p is not None and p.addr == d.promoting and leaders:
            p.leaders = leaders
        if p is None or p.addr != d.promoting:
            # failover-timeout is a 64-bit number in Redis: garbage beyond that would
            # overflow the float and make every pass raise.
            timeout_s = (min(max(d.failover_timeout_ms, -(2**63)), 2**63) or 180_000) / 1000
            self.promotions[d.name] = Promotion(d.promoting, time.monotonic() + timeout_s,
                                                leaders=leaders)
            log.info("promotion_watch", group=d.name, replica=str(d.promoting),
                     timeout_s=timeout_s, **self.timeline())

    def poll_promotions(self) -> list[str]:
        """Ask ROLE of every replica being promoted; the groups whose replica just became
        master."""
        if self.nodes is None:
            return []
        asked = self._watching()
        roles = self.nodes.roles([p.addr for p in asked.values()])
        changed: list[str] = []
        for group, p in asked.items():
            role = roles[p.addr]
            if isinstance(role, NodeQuiet):  # timed out just before: its error is logged already
                continue
            if isinstance(role, NodeError):
                if str(role) != p.error:
                    log.warning("role_check_failed", group=group, replica=str(p.addr),
                                error=str(role))
                p.error = str(role)
                continue
            if role.kind == "master":
                p.is_master = True
                changed.append(group)
                log.info("promoted_replica_is_master", group=group, replica=str(p.addr),
                         **self.timeline())
        return changed

    def promotion_poll_s(self) -> float:
        """How long until the next ROLE sweep: `promotion_poll_interval_s`, ten times that
        once every pending watch is older than PROMOTION_FAST_S (a failover that stalls
        costs the loop and the node little for the rest of its timeout)."""
        now = time.monotonic()
        fast = any(now - p.since < PROMOTION_FAST_S for p in self._watching().values())
        return self.settings.promotion_poll_interval_s * (1 if fast else 10)

    def promotions_pending(self) -> bool:
        return bool(self._watching())

    def _watching(self) -> dict[str, Promotion]:
        """The promotions still asked ROLE: not master yet, within the failover timeout."""
        now = time.monotonic()
        return {g: p for g, p in self.promotions.items() if not p.is_master and now < p.until}

    def _note_decisions(self, decisions: Sequence[Decision], trigger: str) -> None:
        """Log verdict changes: one line when a group becomes undecided or decided again,
        when its master changes, when a replica is lost or back, when it is fenced."""
        for d in decisions:
            if d.master is None:
                if self._undecided.get(d.name) != d.reason:
                    log.warning("undecided", group=d.name, reason=d.reason,
                                action="haproxy keeps its state", **self.timeline())
                    self.emit("undecided", {"group": d.name, "reason": d.reason})
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
                         **self.timeline())
                self.emit("failover", {"group": d.name, "from": str(old.master),
                                        "to": str(d.master), "epoch": d.epoch})
            else:
                for r in sorted(d.paused - old.paused):
                    log.info("replica_paused", group=d.name, replica=str(r),
                             reason="follows the old master: Sentinel's SLAVEOF to it is due "
                             "and closes its connections; no new reads until it follows "
                             f"{d.promoting or d.master}", **self.timeline())
                for r in sorted(old.replicas - d.replicas - d.paused):
                    log.info("replica_lost", group=d.name, replica=str(r), **self.timeline())
                    self.emit("replica_lost", {"group": d.name, "replica": str(r)})
                for r in sorted(d.replicas - old.replicas):
                    log.info("replica_healthy", group=d.name, replica=str(r), **self.timeline())
                    self.emit("replica_back", {"group": d.name, "replica": str(r)})
            if d.fenced and not (old and old.fenced):
                log.warning("master_fenced", group=d.name, reason=d.reason, **self.timeline())
            self._decisions[d.name] = d
        self.counters.undecided = set(self._undecided)
        now = time.monotonic()
        for group in self._undecided:
            self.counters.undecided_since.setdefault(group, now)
        for group in list(self.counters.undecided_since):
            if group not in self._undecided:
                del self.counters.undecided_since[group]

    def _log_pass(self, trigger: str, scope: str, groups: int, duration_ms: float,
                  views: Sequence[SentinelView], undecided: int, sentinels_ms: float) -> None:
        """One summary line per pass (the HAProxy side logs its own changes);
        `sentinels_ms`: of `duration_ms`, the time waited for the Sentinels (from asking to
        answers that settle the groups, or all of them), so a slow pass shows its side."""
        fields = dict(
            trigger=trigger,
            scope=scope,
            groups=groups,
            duration_ms=round(duration_ms, 2),
            sentinels_ms=round(sentinels_ms, 2),
            sentinels_ok=sum(1 for v in views if v.usable),
            sentinels=len(views),
            pending=sum(1 for v in views if v.problem == "pending"),
            undecided=undecided,
        )
        # Quiet periodic passes are debug: an idle cluster should not fill the log.
        if trigger == "resync" and not undecided:
            log.debug("pass", **fields)
        else:
            log.info("pass", **fields)


def _key(d: Decision) -> tuple[object, ...]:
    """What of a verdict HAProxy follows (the reason and vote count aside)."""
    return (d.master, d.epoch, d.replicas, d.paused, d.fenced, d.fallback, d.promoting,
            d.early)
