"""The loop's view of which nodes each group has: between reading Sentinel and deciding.

Four jobs, each one call from the loop (controller.loop keeps only the calls):
- `normalize(views)`: resolve every hostname the Sentinels name (controller.resolver, the only
  DNS) and rewrite the views with one identity per node (controller.topology); log a node's
  address when it appears or changes, and a node that cannot be routed (name not resolved,
  only unusable addresses, two names on one address) with its reason, once per change;
- `adjust(decision, views, before)`: fill in replicas the Sentinels' lists miss right after
  `+slave` or `SENTINEL RESET` (controller.membership), asking an absent replica ROLE when a
  Redis node adapter is there; hold back a replica that comes back to serve reads until it
  says itself that it is linked to the master;
- `ask_held()`, after a pass's hand-over (a node never delays one): ask those replicas ROLE,
  all in one sweep (nodes that stop answering cost one timeout together, not one each), and
  pass their group again at once when they answered;
- re-check passes: a Sentinel publishes `+slave` before it knows the new replica's link status
  and nothing follows when it learns it (facts), so every `+slave`, `+reset-master`,
  `+convert-to-slave` and `+slave-reconf-done` schedules passes `recheck_interval_s` apart for
  `recheck_window_s`; names in use are re-resolved every `resolve_interval_s` and a pass runs
  when a node's address changed (a pod restarted with a new IP: Sentinel names it the same).
Must not talk to Sentinel or HAProxy; nothing here decides who is master.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence

import structlog

from controller.membership import Membership
from controller.model import Address, Decision, SentinelView
from controller.redis_nodes import Role, RoleAsker
from controller.resolver import Resolver
from controller.sentinel import Hint
from controller.topology import addresses_by_group, canonical_views, identities

log = structlog.get_logger("controller")

RECHECK_EVENTS = frozenset({"+slave", "+reset-master", "+convert-to-slave", "+slave-reconf-done"})
SAID_KEPT = 4096  # answers kept at most (bounded memory)


class Roster:
    def __init__(
        self,
        resolver: Resolver,
        nodes: RoleAsker | None = None,
        absent_grace_s: float = 20.0,
        recheck_interval_s: float = 0.1,
        recheck_window_s: float = 2.0,
        resolve_interval_s: float = 1.0,
    ) -> None:
        self.resolver = resolver
        self.nodes = nodes  # controller.redis_nodes.RedisNodes, for ROLE of absent replicas
        self.membership = Membership(int(absent_grace_s * 1000))
        self.recheck_interval_s = recheck_interval_s
        self.recheck_window_s = recheck_window_s
        self.resolve_interval_s = resolve_interval_s
        # Per group, as its last read saw them (a pass may read only some groups):
        self._named: dict[str, dict[Address, Address]] = {}  # named address -> identity
        self._unroutable: dict[str, dict[Address, str]] = {}  # address -> why
        self._ident: dict[Address, Address] = {}  # union over the groups
        self._problems: dict[Address, str] = {}
        self.recheck_groups: set[str] = set()  # groups the re-check passes are for
        self._kept: dict[str, set[str]] = {}  # group -> replicas added by membership
        # Replicas starting to serve reads: to ask whether they are linked (-> group, master),
        # and what each said (linked / not / no answer, to which master, when).
        self._to_ask: dict[Address, tuple[str, Address]] = {}
        self._said: dict[Address, tuple[bool | None, Address, float]] = {}
        self._reported: set[Address] = set()  # held replicas `replica_not_ready` was said of
        self._recheck_until = 0.0
        self._next_recheck = 0.0
        self._next_resolve = time.monotonic() + resolve_interval_s

    # -- before decide ------------------------------------------------------------------
    def normalize(self, views: Sequence[SentinelView]) -> list[SentinelView]:
        by_group = addresses_by_group(views)
        addrs: set[Address] = set().union(*by_group.values())
        names = {a.host for a in addrs if a.ip is None}
        resolved = self.resolver.resolve_all(names) if names else {}
        ident, problems = identities(addrs, resolved)
        if not (names or problems or self._ident or self._problems):
            return canonical_views(views, ident)  # addresses only, now and before: no news
        for g, mine in by_group.items():
            named = {a: ident[a] for a in mine
                     if a.ip is None and a in ident and a not in problems}
            unroutable = {a: problems[a] for a in mine if a in problems}
            self._log_changes(g, named, unroutable)
        return canonical_views(views, ident)

    def _log_changes(self, group: str, named: dict[Address, Address],
                     problems: dict[Address, str]) -> None:
        """Record what one group's read says about its named nodes, logging what changed
        (the unions `_ident`/`_problems` are kept up to date here, never rebuilt: a pass may
        read one group of a thousand)."""
        old_named = self._named.get(group, {})
        old_problems = self._unroutable.get(group, {})
        self._named[group], self._unroutable[group] = named, problems
        for a, i in sorted(named.items()):
            old = self._ident.get(a)
            if old != i:
                log.info("node_address", node=str(a), address=str(i),
                         **({"previous": str(old)} if old is not None else {}))
                self._ident[a] = i
        for a, why in sorted(problems.items()):
            if self._problems.get(a) != why:
                log.warning("node_unroutable", node=str(a), reason=why,
                            action="kept out of HAProxy until it resolves to one usable address")
                self._problems[a] = why
        for a in sorted(set(old_named) - set(named)):
            if not self._named_elsewhere(a):
                self._ident.pop(a, None)
        for a in sorted(set(old_problems) - set(problems)):
            if a not in named and not self._named_elsewhere(a):
                log.info("node_gone", node=str(a), detail="no Sentinel names it any more")
            self._problems.pop(a, None)

    def _named_elsewhere(self, a: Address) -> bool:
        """Another group still names `a` (rare: checked only when a group stops naming it)."""
        return any(a in n or a in p for n, p in zip(self._named.values(),
                                                    self._unroutable.values(), strict=True))

    # -- after decide ---------------------------------------------------------------------
    def adjust(
        self, d: Decision, views: Sequence[SentinelView], before: frozenset[Address]
    ) -> Decision:
        held_before = self.membership.held.get(d.name, frozenset())
        asking = self.nodes is not None
        d, why = self.membership.adjust(
            d, views, before, time.monotonic() * 1000, self._confirm if asking else None,
            functools.partial(self._said_linked, d.name) if asking else None)
        held = self.membership.held.get(d.name, frozenset())
        self._reported -= held_before - held
        if held:  # nothing else would pass the group again when its resync is done
            self._recheck(d.name)
        shown = {w.split(": ", 1)[0] for w in why}
        old = self._kept.get(d.name, set())
        for w in why:
            if w.split(": ", 1)[0] not in old:
                log.info("replica_kept", group=d.name, replica=w.split(": ", 1)[0],
                         reason=w.split(": ", 1)[1])
        self._kept[d.name] = shown
        return d

    def _said_linked(self, group: str, replica: Address, master: Address) -> bool | None:
        """What a replica coming back to serve reads said about its link when `ask_held` asked
        it after the last pass (each answer counts for one pass); not asked since: False, and
        it is asked after this pass has handed its verdicts over."""
        said = self._said.pop(replica, None)
        if said is not None and said[1] == master:
            return said[0]
        self._to_ask[replica] = (group, master)
        return False

    def ask_held(self) -> None:
        """Ask the replicas `adjust` held back for not having said yet whether they are
        linked (ROLE, one sweep); a group whose replica answered, or could not be asked, is
        passed again at once. Called by the loop after a pass's hand-over: never on the way
        to HAProxy."""
        to_ask, self._to_ask = self._to_ask, {}
        said_by = self._ask({replica: master for replica, (_, master) in to_ask.items()})
        now = time.monotonic()
        for replica, (group, master) in to_ask.items():
            said = said_by[replica]
            self._said[replica] = (said, master, now)
            if said is not False:
                self._recheck(group, at_once=True)
            elif replica not in self._reported:
                self._reported.add(replica)
                log.info("replica_not_ready", group=group, replica=str(replica),
                         reason=f"the Sentinels see it healthy, but it does not say it is "
                         f"linked to {master} yet (loading or resyncing): no reads until it "
                         "does")
        if len(self._said) > SAID_KEPT:  # bounded: only the latest answers matter
            for a in sorted(self._said, key=lambda r: self._said[r][2])[:-SAID_KEPT]:
                del self._said[a]

    def _confirm(self, replica: Address, master: Address) -> bool | None:
        """Whether the replica says it is linked to `master` (membership asks a replica the
        Sentinels forgot); None: it could not be asked (an absent replica is then not kept,
        a new one starts on the Sentinels' word)."""
        return self._ask({replica: master})[replica]

    def _ask(self, masters: dict[Address, Address]) -> dict[Address, bool | None]:
        """For each replica (key), whether it says (ROLE, one sweep) it is linked to its
        master (value); None: it could not be asked."""
        if self.nodes is None or not masters:
            return dict.fromkeys(masters)
        try:
            roles = self.nodes.roles(list(masters))
        except Exception:  # a bug: say so; the pass goes on without answers
            log.exception("unexpected_error", where="role sweep")
            return dict.fromkeys(masters)
        out: dict[Address, bool | None] = {}
        for replica, master in masters.items():
            role = roles.get(replica)
            if not isinstance(role, Role):
                log.debug("replica_not_confirmed", replica=str(replica), error=str(role))
                # Not allowed to ask (no redis_password): no answer either way; for an absent
                # replica the grace decides.
                out[replica] = True if "authentication" in str(role) else None
                continue
            said = role.linked_to
            if said is None:
                out[replica] = False
                continue
            if said.ip is None:
                r = self.resolver.resolve(said.host)
                ident, _ = identities([said, master], {said.host: r})
                said = ident.get(said, said)
            out[replica] = Address(said.ip or said.host, said.port) == master
        return out

    # -- extra passes ---------------------------------------------------------------------
    def hint(self, h: Hint) -> None:
        if h.event is not None and h.event.channel in RECHECK_EVENTS:
            self._recheck(h.event.master)

    def _recheck(self, group: str | None, at_once: bool = False) -> None:
        """Re-check passes of `group` (all groups when None) for the next `recheck_window_s`,
        the first after `recheck_interval_s` (`at_once`: now)."""
        now = time.monotonic()
        if self._recheck_until <= now:
            self.recheck_groups = set()
        if group is not None:
            self.recheck_groups.add(group)
        self._recheck_until = max(self._recheck_until, now + self.recheck_window_s)
        if at_once:
            self._next_recheck = now
        elif self._next_recheck <= now:
            self._next_recheck = now + self.recheck_interval_s

    def next_due(self) -> float:
        """Monotonic time of the next extra check (re-check pass or re-resolution)."""
        due = self._next_resolve if self._ident else float("inf")
        if self._recheck_until > time.monotonic():
            due = min(due, self._next_recheck)
        return due

    def due(self) -> str:
        """A trigger when an extra pass is due now ("recheck": of `recheck_groups`, all of
        them when empty; "address_changed": a full pass), else ""."""
        now = time.monotonic()
        if self._ident and now >= self._next_resolve:
            self._next_resolve = now + self.resolve_interval_s
            if self._addresses_changed():
                return "address_changed"
        if self._recheck_until > now >= self._next_recheck:
            self._next_recheck = now + self.recheck_interval_s
            return "recheck"
        return ""

    def _addresses_changed(self) -> bool:
        names = {a.host for a in self._ident} | {a.host for a in self._problems if a.ip is None}
        resolved = self.resolver.resolve_all(names)
        ident, problems = identities(set(self._ident) | set(self._problems), resolved)
        now = {a: i for a, i in ident.items() if a.ip is None and a not in problems}
        return now != self._ident or set(problems) != set(self._problems)
