"""Which nodes a group has, and which replicas serve reads, while the Sentinels' replica lists
are incomplete. Pure: the clock and the node's own word come in as values.

decide counts a replica's votes among the Sentinels at the top epoch and needs half of them.
Two moments of a topology change leave replicas out of some or all lists (facts, "Topology
changes"):

- a replica started at runtime is listed by one Sentinel first (`+slave`: found in the
  master's INFO, polled every 10 s by each Sentinel on its own), the others may list it only
  seconds later. A replica that fewer than half list, but that every Sentinel listing it sees
  healthy (up, role slave, linked to the elected master), serves reads too: nobody has seen
  anything wrong with it, and the ones who see it agree it is fine;
- `SENTINEL RESET <group>` makes every Sentinel forget every replica until it rediscovers them
  (5.7 s measured; up to the 10 s INFO period), and lists it again before its first INFO
  reply (no master host yet). A replica that served reads and that no Sentinel lists with
  anything known keeps serving for `absent_grace_ms`, as long as the master is the
  same and the node itself still says it is a replica linked to that master (`confirmed`,
  when the caller can ask it ROLE). A node removed with a reset (stopped, detached) is not
  confirmed, or not rediscovered within the grace: it leaves the read backend.

A replica that stopped serving reads (down, disconnected, unlinked) and comes back starts only
once it says itself (`linked`) that it is a replica of the master with its link up: the
Sentinels' view of a replica's link is up to 10 s old (INFO period), and a replica that has
just restarted answers LOADING, or serves an empty or old dataset, until its resync is done.
Such a replica is `held` until it does. One that cannot be asked (no answer, not allowed)
starts on the Sentinels' word, as before; so does one never seen serving (a new replica, or
every replica when the controller starts: their INFO is new to the Sentinels too).

`Decision.nodes` gets every node the group has: the master, every replica a usable Sentinel
lists, and the retained ones (they keep their HAProxy slots).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from controller.decide import group_size, start_votes
from controller.model import Address, Decision, MasterView, ReplicaInfo, SentinelView

# (replica, master) -> True: it says it replicates from the master, link up; False: it
# answered otherwise; None: it could not be asked (the Sentinels' word stands).
Confirm = Callable[[Address, Address], bool | None]


def _fresh(r: ReplicaInfo) -> bool:
    """Listed but nothing known yet: just (re)discovered, its first INFO not in (no master
    host, not down, not reporting master). Such an entry says nothing against the replica."""
    return (r.master_addr is None and not (r.flags & {"s_down", "o_down"})
            and r.role_reported != "master")


def _top_views(d: Decision, views: Sequence[SentinelView]) -> list[MasterView]:
    return [m for v in views if v.usable and (m := v.masters.get(d.name)) is not None
            and m.epoch == d.epoch]


class Membership:
    """Per group: since when each serving replica has been absent from every list."""

    def __init__(self, absent_grace_ms: int = 20_000) -> None:
        self.absent_grace_ms = absent_grace_ms
        self._absent_since: dict[str, dict[Address, float]] = {}  # group -> replica -> ms
        self._master: dict[str, Address] = {}
        # group -> replicas back that the Sentinels would let serve reads but that have not
        # said they are linked to the master yet (the last `adjust` with `linked`)
        self.held: dict[str, frozenset[Address]] = {}
        self._left: dict[str, set[Address]] = {}  # group -> replicas that stopped serving

    def adjust(
        self,
        d: Decision,
        views: Sequence[SentinelView],
        before: frozenset[Address],
        now_ms: float,
        confirmed: Confirm | None = None,
        linked: Confirm | None = None,
    ) -> tuple[Decision, list[str]]:
        """`d` with the partly listed and the retained replicas added to `replicas`, and
        `nodes` filled; plus one line per replica added this way (for the log).
        `confirmed`: asks a retained replica now; `linked`: what a replica coming back to
        serve said last (it must not ask: a pass must not wait for a node before its
        hand-over)."""
        if d.master is None:
            return d, []
        master = d.master
        top = _top_views(d, views)
        readers = set(d.replicas)
        why: list[str] = []
        # Listed by fewer Sentinels than decide needs, healthy for every one that lists it.
        # (A steady group has every replica listed by all: nothing to look at.)
        # A fresh entry (listed again, first INFO not in) is not listed yet: decide counts it
        # as a vote against, here it counts for nothing either way.
        counts: dict[Address, int] = {}
        for m in top:
            for r in m.replicas:
                if not _fresh(r):
                    counts[r.addr] = counts.get(r.addr, 0) + 1
        need = start_votes(len(top), group_size(top))  # decide's bar for a new reader
        for addr in sorted(a for a, n in counts.items()
                           if n < need and a not in readers and a != master):
            entries_of = [r for m in top for r in m.replicas if r.addr == addr and not _fresh(r)]
            if all(r.healthy_for(master) for r in entries_of):
                readers.add(addr)
                why.append(f"{addr}: healthy for the {len(entries_of)} of {len(top)} sentinels "
                           "that list it (the others do not list it yet)")
        entries = [r for v in views if v.usable and d.name in v.masters
                   for r in v.masters[d.name].replicas]
        everywhere = {r.addr for r in entries}
        same_master = self._master.get(d.name, master) == master
        self._master[d.name] = master
        pending = before - readers - {master}
        absent_since = self._absent_since.get(d.name, {})
        if pending or absent_since:
            known = {r.addr for r in entries if not _fresh(r)}  # listed with something known
            for addr in sorted(pending - known):
                since = absent_since.setdefault(addr, now_ms)
                if not same_master or now_ms - since > self.absent_grace_ms:
                    continue
                if confirmed is not None and confirmed(addr, master) is not True:
                    continue
                readers.add(addr)
                why.append(f"{addr}: no sentinel knows it (reset?) for "
                           f"{(now_ms - since) / 1000:.1f} s; kept up to "
                           f"{self.absent_grace_ms / 1000:.0f} s"
                           + (", it says it replicates from the master" if confirmed else ""))
            absent = before - known
            for addr in [a for a in absent_since if a not in absent]:
                del absent_since[addr]
            if absent_since:
                self._absent_since[d.name] = absent_since
            else:
                self._absent_since.pop(d.name, None)
        # A replica that left the read side (down, disconnected, unlinked) and comes back
        # starts only once it says so itself (ROLE: a replica of the master, link
        # `connected`), when it can be asked: Sentinel polls a replica's INFO every 10 s, so
        # right after a restart (its `-sdown` comes with the first PING reply, which it gives
        # while still LOADING its data) the Sentinels still show its link as it was before
        # the crash; until its resync is done it serves an empty or old dataset, or LOADING.
        # (A replica never seen serving is judged on the Sentinels' INFO of it, which is new.)
        left = self._left.get(d.name, set())
        held: frozenset[Address] = frozenset()
        if linked is not None:
            held = frozenset(a for a in sorted((readers - before - {master}) & left)
                             if linked(a, master) is False)
            readers -= held
        if held:
            self.held[d.name] = held
        else:
            self.held.pop(d.name, None)
        nodes = {master} | everywhere | readers
        if d.fallback is not None:
            nodes.add(d.fallback)
        left = ((left | (before - readers - d.paused)) - readers - {master}) & nodes
        if left:
            self._left[d.name] = left
        else:
            self._left.pop(d.name, None)
        return dataclasses.replace(d, replicas=frozenset(readers), nodes=frozenset(nodes)), why
