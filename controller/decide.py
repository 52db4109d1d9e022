"""Turn every Sentinel's answer into one verdict per master group. Pure: no I/O, no clock.

Rules (facts B.3):
- only Sentinels that answered and are not in TILT vote; fewer than `min_voters` -> undecided;
- the highest config-epoch wins: it is the version of the master's address, so a lagging
  Sentinel never flips the state back, and the leader's fresh promotion (new epoch at once,
  facts B.2) is followed without waiting for the others; an epoch older than one already
  acted on is not followed unless every configured Sentinel agrees on it;
- Sentinels at that epoch that name different addresses -> undecided (no guessing);
- a replica is healthy when at least half of the Sentinels at that epoch say it is up and
  replicating from the elected master (with two Sentinels left, one stale view must not
  empty the read backend; the returning old master is seen as unhealthy by all of them);
- a master Sentinel reports o_down, or whose failover has started (`failover_in_progress`,
  nothing promoted yet), is fenced: writes go nowhere until the new master is known. A live
  old master keeps acknowledging writes after its replica got `REPLICAOF NO ONE` until it is
  reconfigured (a manual `SENTINEL FAILOVER`: ~850 acked writes lost per failover, measured);
  a short write outage is the price of losing none.
"""

from __future__ import annotations

from collections.abc import Sequence

from controller.model import Address, Decision, MasterView, SentinelView


def decide(
    name: str, views: Sequence[SentinelView], min_voters: int, seen_epoch: int = -1
) -> Decision:
    """The verdict for master group `name` from all Sentinels' views.

    `seen_epoch` is the highest config-epoch the caller has acted on for this group: an
    answer older than that comes from lagging Sentinels (e.g. the leader that promoted died
    before the others heard of it) and is not followed, unless every configured Sentinel
    agrees on it (the group was reset or re-created: epochs start again).
    """
    answers: list[MasterView] = [
        v.masters[name] for v in views if v.usable and name in v.masters
    ]
    skipped = [v.sentinel for v in views if not v.usable or name not in v.masters]

    def undecided(reason: str, epoch: int = -1) -> Decision:
        return Decision(name=name, master=None, epoch=epoch, reason=reason, voters=len(answers))

    if len(answers) < min_voters:
        why = f"{len(answers)} of {len(views)} sentinels answered, need {min_voters}"
        if skipped:
            why += f" (no answer: {', '.join(skipped)})"
        return undecided(why)
    top = max(a.epoch for a in answers)
    at_top = [a for a in answers if a.epoch == top]
    addrs = {a.addr for a in at_top}
    if len(addrs) != 1:
        shown = ", ".join(sorted(str(a) for a in addrs))
        return undecided(f"sentinels at epoch {top} disagree on the master: {shown}", top)
    if top < seen_epoch and not (len(at_top) == len(views) == len(answers)):
        return undecided(
            f"sentinels report epoch {top}, older than epoch {seen_epoch} seen before", top
        )
    master = addrs.pop()
    replicas = _healthy_replicas(master, at_top)
    odown = any(a.odown for a in at_top)
    failing_over = any(a.failing_over for a in at_top)
    fenced = odown or failing_over
    reason = f"epoch {top} from {len(at_top)} of {len(answers)} sentinels"
    if odown:
        reason = f"master {master} is o_down (epoch {top})"
    elif failing_over:
        reason = f"failover of master {master} in progress (epoch {top})"
    return Decision(
        name=name,
        master=master,
        epoch=top,
        replicas=replicas,
        fenced=fenced,
        reason=reason,
        voters=len(answers),
    )


def _healthy_replicas(master: Address, views: Sequence[MasterView]) -> frozenset[Address]:
    votes: dict[Address, int] = {}
    for view in views:
        for r in view.replicas:
            if r.addr != master and r.healthy_for(master):
                votes[r.addr] = votes.get(r.addr, 0) + 1
    need = (len(views) + 1) // 2  # at least half: 1 of 1, 1 of 2, 2 of 3, 2 of 4
    return frozenset(a for a, n in votes.items() if n >= need)
