"""Turn every Sentinel's answer into one verdict per master group. Pure: no I/O, no clock.

Writes (facts B.3):
- only Sentinels that answered and are not in TILT vote, one vote per Sentinel (by its own
  ID, whatever address or alias it was listed at); fewer than a majority of the group's
  Sentinels (as they report: num-other-sentinels + 1; or `min_voters` when the operator set
  it) -> undecided, with each missing Sentinel's reason (unreachable, in TILT, not a
  Sentinel, does not monitor the group, bad reply);
- the highest config-epoch wins: it is the version of the master's address, so a lagging
  Sentinel never flips the state back, and the leader's fresh promotion (new epoch at once,
  facts B.2) is followed without waiting for the others; an epoch older than one already
  acted on is not followed unless every configured Sentinel agrees on it;
- Sentinels at that epoch that name different addresses -> undecided (no guessing);
- a master Sentinel reports o_down, or whose failover has started (`failover_in_progress`,
  nothing promoted yet), is fenced: writes go nowhere until the new master is known. A live
  old master keeps acknowledging writes after its replica got `REPLICAOF NO ONE` until it is
  reconfigured (a manual `SENTINEL FAILOVER`: ~850 acked writes lost per failover, measured);
- early promotion: the leader's chosen replica (flagged `promoted`) becomes the write master
  as soon as the caller saw it answer ROLE master, up to ~1 s before the leader's own INFO
  poll confirms it (`+promoted-slave`); the old master stays fenced. The moment the leader's
  view no longer shows that choice (failover aborted, leader lost), the group is fenced again.

Reads:
- a replica STARTS serving reads when at least half of the Sentinels at the top epoch see it
  up and replicating from the elected master, and at least half of the group's Sentinels
  (2 of 3) even when a pass decided before all of them answered (one early "healthy" that
  the late answer contradicts would make it flap); the returning old master is seen as
  unhealthy by all of them;
- a replica that already serves reads KEEPS serving them (half of the answers at the top
  epoch: with two Sentinels left, one stale view must not empty the read backend) while it
  is up, a replica, and its link has been down no longer than `max_link_down_ms`: while its
  master is dead or failing over it still holds every write it received (and it is the node
  that will be promoted);
- the master is the read fallback when no replica can serve; when it is o_down, the replica
  the leader is promoting is (Sentinels that already saw it answer role master no longer
  count it as a replica);
- a replica being promoted that served reads keeps serving them through its promotion (as
  master too, until the failover ends or another node replicates from it); meanwhile the
  replicas that still follow the old master take no new reads: Sentinel's `SLAVEOF` to them,
  moments later, closes every connection they have (a 3-node group lost a second read to it).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from controller.model import Address, Decision, MasterView, SentinelView


@dataclass(frozen=True)
class Rules:
    """Policy settings that shape every verdict."""

    max_link_down_ms: int = 60_000  # a serving replica's link may be down this long
    early_promotion: bool = True  # follow the leader's promotion at ROLE master


@dataclass(frozen=True)
class History:
    """What the caller acted on before, per group: verdicts are level-triggered, but two
    rules look back (an epoch never goes back; a replica keeps serving while staleness is
    bounded)."""

    seen_epoch: int = -1  # highest config-epoch acted on
    readers: frozenset[Address] = frozenset()  # replicas that served reads in the last verdict
    promoted: Address | None = None  # the leader's choice, seen answering ROLE master


def decide(
    name: str,
    views: Sequence[SentinelView],
    min_voters: int | None = None,
    history: History = History(),  # frozen: a shared default is safe
    rules: Rules = Rules(),  # frozen: a shared default is safe
) -> Decision:
    """The verdict for master group `name` from all Sentinels' views.

    `min_voters` None: a majority of the group's Sentinels must answer. `history.seen_epoch`
    protects against lagging Sentinels (e.g. the leader that promoted died before the others
    heard of it): an older answer is not followed unless every Sentinel agrees on it (the
    group was reset or re-created: epochs start again).
    """
    by_id, size, need = _votes(name, views, min_voters)
    answers = list(by_id.values())

    def undecided(reason: str, epoch: int = -1) -> Decision:
        return Decision(name=name, master=None, epoch=epoch, reason=reason, voters=len(answers))

    if len(answers) < need:
        why = f"{len(answers)} of {size} sentinels answered, need {need}"
        missing = _why_missing(name, views, set(by_id))
        if missing:
            why += f" ({missing})"
        return undecided(why)
    top = max(a.epoch for a in answers)
    at_top = [a for a in answers if a.epoch == top]
    addrs = {a.addr for a in at_top}
    if len(addrs) != 1:
        shown = ", ".join(sorted(str(a) for a in addrs))
        return undecided(f"sentinels at epoch {top} disagree on the master: {shown}", top)
    if top < history.seen_epoch and not (len(at_top) == len(answers) >= size):
        return undecided(
            f"sentinels report epoch {top}, older than epoch {history.seen_epoch} seen before",
            top,
        )
    master = addrs.pop()
    odown = any(a.odown for a in at_top)
    failing_over = any(a.failing_over for a in at_top)
    promoting = _promoting(at_top)
    fenced = odown or failing_over
    reason = f"epoch {top} from {len(at_top)} of {len(answers)} sentinels"
    if odown:
        reason = f"master {master} is o_down (epoch {top})"
    elif failing_over:
        reason = f"failover of master {master} in progress (epoch {top})"
    early = (
        fenced and rules.early_promotion and promoting is not None
        and promoting == history.promoted
    )
    if early:
        assert promoting is not None
        reason = (f"{promoting} answers ROLE master: the leader promotes it (old master "
                  f"{master} {'o_down' if odown else 'being failed over'}, epoch {top})")
        master, fenced = promoting, False
    # Reads follow the node taking over (the replica being promoted, once one is chosen)
    # through the whole failover: its promotion, then the other replicas' reconfiguration.
    in_failover = promoting is not None or any(a.reconfiguring for a in at_top)
    replicas, paused = _readers(promoting or master, at_top, history.readers,
                                rules.max_link_down_ms, size, in_failover)
    return Decision(
        name=name,
        master=master,
        epoch=top,
        replicas=replicas,
        paused=paused,
        fenced=fenced,
        reason=reason,
        voters=len(answers),
        # An o_down master serves nothing; the replica being promoted holds every write.
        fallback=promoting if odown and not early else master,
        promoting=promoting,
        early=early,
        failover_timeout_ms=max(a.failover_timeout_ms for a in at_top),
    )


def decidable(
    name: str, views: Sequence[SentinelView], pending: int, min_voters: int | None = None,
    before: Decision | None = None, history: History = History(), rules: Rules = Rules(),
) -> bool:
    """Whether the answers in `views` settle group `name`'s verdict while `pending` Sentinels
    have not answered yet: a pass may then decide without waiting for them (a slow Sentinel
    must not hold every pass). True when nobody is pending, when a majority (`min_voters`) of
    the group's Sentinels agrees on one address at the top epoch among the answers, or when
    even every pending answer could not make a majority (undecided either way).

    Never early when the verdict would undo, at the same epoch, what one Sentinel alone may
    know (`before`: the verdict acted on): lift a fence (the Sentinel that saw the master
    o_down, or leads its failover, may be the one pending), or leave the replica followed by
    early promotion (only the leader names it): those wait for every answer.

    A pending answer may still raise the top epoch or fence the group (the failover leader is
    the slow one): the caller compares the verdict with the complete answers once they are
    in, and passes again when it differs.
    """
    if pending <= 0:
        return True
    by_id, _, need = _votes(name, views, min_voters)
    if len(by_id) + pending < need:
        return True
    if len(by_id) < need:
        return False
    top = max(a.epoch for a in by_id.values())
    at_top: dict[Address, int] = {}
    for a in by_id.values():
        if a.epoch == top:
            at_top[a.addr] = at_top.get(a.addr, 0) + 1
    if max(at_top.values()) < need:
        return False
    if before is not None and (before.fenced or before.early):
        d = decide(name, views, min_voters, history, rules)
        if d.master is not None and d.epoch == before.epoch:
            lifts_fence = before.fenced and not d.fenced and d.master == before.master
            leaves_promoted = before.early and d.master != before.master
            return not (lifts_fence or leaves_promoted)
    return True


def _votes(
    name: str, views: Sequence[SentinelView], min_voters: int | None
) -> tuple[dict[str, MasterView], int, int]:
    """Usable answers for `name` by Sentinel ID, the group's size (as its Sentinels report
    it: num-other-sentinels + 1) and the votes needed."""
    by_id: dict[str, MasterView] = {}
    for v in views:
        if v.usable and name in v.masters:
            by_id.setdefault(v.identity, v.masters[name])
    answers = by_id.values()
    size = group_size(answers) if answers else len({v.identity for v in views})
    return by_id, size, min_voters or size // 2 + 1


def group_size(answers: Collection[MasterView]) -> int:
    """The group's Sentinels as its answers report them (num-other-sentinels + 1), at least
    as many as answered."""
    return max([len(answers), *(a.other_sentinels + 1 for a in answers)])


def start_votes(at_top: int, size: int) -> int:
    """Votes a node that does not serve reads yet needs to start: half of the `at_top`
    views at the top epoch, and half of the group's `size` Sentinels even when a pass
    decided before all of them answered (one early "healthy" that the late answer
    contradicts would make it flap in and out with every re-check)."""
    return max((at_top + 1) // 2, (size + 1) // 2)


def _why_missing(name: str, views: Sequence[SentinelView], counted: set[str]) -> str:
    """`unreachable: A; in TILT: B; ...` for the Sentinels whose vote is missing."""
    kinds: dict[str, list[str]] = {}
    for v in views:
        if v.identity in counted:
            continue
        if v.error is not None:
            kind = {"not_sentinel": "not a Sentinel", "auth": "refused our credentials",
                    "bad_reply": "bad reply", "pending": "no answer yet"}.get(v.problem,
                                                                              "unreachable")
        elif v.tilt:
            kind = "in TILT"
        elif name in v.group_errors:
            kind = f"bad reply for {name}"
        else:
            kind = f"does not monitor {name}"
        kinds.setdefault(kind, []).append(v.sentinel)
    return "; ".join(f"{k}: {', '.join(vs)}" for k, vs in kinds.items())


def _promoting(views: Sequence[MasterView]) -> Address | None:
    """The replica the failover leader is promoting, when the views agree on one."""
    chosen = {p for v in views if (p := v.promoting) is not None}
    return chosen.pop() if len(chosen) == 1 else None


def _readers(
    successor: Address, views: Sequence[MasterView], before: frozenset[Address],
    max_link_down_ms: int, size: int, keep_successor: bool,
) -> tuple[frozenset[Address], frozenset[Address]]:
    """The nodes that serve reads: at least half of `views` (1 of 1, 1 of 2, 2 of 3, 2 of 4)
    see each one fit; a node that does not serve yet needs `start_votes`. `successor`: the
    master, or the replica the leader is promoting. Also the readers paused for the promotion
    (below): they keep their standing (`History.readers`), so that an aborted failover gives
    them back at once.

    With `keep_successor` (a failover in progress: the leader promotes the successor, or
    has promoted it and reconfigures the other replicas), a node that served reads as a
    replica keeps serving them through its promotion, until another node replicates from it
    or the failover ends; meanwhile the replicas that do not replicate from it yet take no
    new reads: Sentinel is about to send them `SLAVEOF`, whose `CLIENT KILL` closes every
    connection they have (a read moved there would be cut again).
    """
    votes: dict[Address, int] = {}
    following: dict[Address, int] = {}
    for view in views:
        for r in view.replicas:
            if r.addr == successor:
                continue
            healthy = r.healthy_for(successor)
            if healthy or (r.addr in before and r.still_serves(max_link_down_ms)):
                votes[r.addr] = votes.get(r.addr, 0) + 1
            if healthy:
                following[r.addr] = following.get(r.addr, 0) + 1
    keep = (len(views) + 1) // 2
    start = start_votes(len(views), size)
    chosen = frozenset(a for a, n in votes.items() if n >= (keep if a in before else start))
    followed = any(following.get(a, 0) >= keep for a in chosen)
    if keep_successor and successor in before and not followed and _alive(successor, views):
        return frozenset({successor}), chosen
    return chosen, frozenset()


def _alive(node: Address, views: Sequence[MasterView]) -> bool:
    """No view sees `node` down (as the master it is, or as the replica it was)."""
    return not any(
        (v.addr == node and v.odown) or any(r.addr == node and r.sdown for r in v.replicas)
        for v in views
    )
