"""controller.membership on captured Sentinel views: a replica only some Sentinels list yet
(right after `+slave`), and replicas every Sentinel forgot (`SENTINEL RESET`)."""

from __future__ import annotations

import dataclasses

from captured import GROUP, A, B, master, node, views, with_master

from controller.decide import decide
from controller.membership import Membership
from controller.model import Address, SentinelView


def without_replicas(vs: list[SentinelView], which: set[int]) -> list[SentinelView]:
    """Views where the Sentinels at index `which` list no replica (not discovered / reset)."""
    return [with_master(v, replicas=()) if i in which else v for i, v in enumerate(vs)]


def test_a_replica_only_one_sentinel_lists_serves_when_that_one_sees_it_healthy() -> None:
    """Right after `+slave` from one Sentinel: decide needs 2 of 3 votes and has 1; the
    others do not list it at all, so nothing speaks against it: it serves reads."""
    vs = without_replicas(views("steady"), {1, 2})
    d = decide(GROUP, vs, 2)
    assert d.replicas == frozenset()
    adjusted, why = Membership().adjust(d, vs, frozenset(), 0.0)
    assert adjusted.replicas == {node(B)}
    assert "1 of 3 sentinels that list it" in why[0]
    assert adjusted.nodes == {node(A), node(B)}


def test_with_a_sentinel_down_a_replica_one_of_the_two_left_lists_serves() -> None:
    """One Sentinel of three is down and another does not list the new replica yet: decide
    cannot start it (1 vote, half of the group is 2), but the only Sentinel that lists it
    sees it healthy, so it serves, as with all three up."""
    vs = without_replicas(views("steady"), {1})
    vs[2] = dataclasses.replace(vs[2], masters={}, error="connection refused")
    d = decide(GROUP, vs, 2)
    assert d.replicas == frozenset()
    adjusted, why = Membership().adjust(d, vs, frozenset(), 0.0)
    assert adjusted.replicas == {node(B)}
    assert "1 of 2 sentinels that list it" in why[0]


def test_a_replica_a_listing_sentinel_sees_unhealthy_does_not_serve() -> None:
    """One listing Sentinel sees it healthy, another lists it not yet linked: no shortcut."""
    steady = views("steady")
    dead = views("replica_dead")
    vs = [steady[0], dead[1], with_master(steady[2], replicas=())]
    d = decide(GROUP, vs, 2)
    adjusted, _ = Membership().adjust(d, vs, frozenset(), 0.0)
    assert node(B) not in adjusted.replicas


def test_after_a_reset_a_serving_replica_keeps_serving_within_the_grace() -> None:
    """No Sentinel lists the replica that served: it keeps serving until the grace ends."""
    m = Membership(absent_grace_ms=20_000)
    vs = without_replicas(views("steady"), {0, 1, 2})
    d = decide(GROUP, vs, 2)
    kept, why = m.adjust(d, vs, frozenset({node(B)}), now_ms=1_000.0)
    assert kept.replicas == {node(B)} and "no sentinel knows it" in why[0]
    kept, _ = m.adjust(d, vs, frozenset({node(B)}), now_ms=20_999.0)
    assert kept.replicas == {node(B)}
    gone, _ = m.adjust(d, vs, frozenset({node(B)}), now_ms=21_001.0)
    assert gone.replicas == frozenset() and node(B) not in gone.nodes


def test_a_forgotten_replica_that_does_not_confirm_leaves_at_once() -> None:
    """When the node can be asked, one that does not say it replicates from the master
    (stopped, detached: removed with the reset) leaves at once."""
    vs = without_replicas(views("steady"), {0, 1, 2})
    d = decide(GROUP, vs, 2)
    asked: list[tuple[Address, Address]] = []

    def says_no(replica: Address, master: Address) -> bool:
        asked.append((replica, master))
        return False

    gone, _ = Membership().adjust(d, vs, frozenset({node(B)}), 0.0, says_no)
    assert gone.replicas == frozenset()
    assert asked == [(node(B), node(A))]
    kept, _ = Membership().adjust(d, vs, frozenset({node(B)}), 0.0, lambda r, m: True)
    assert kept.replicas == {node(B)}


def test_no_retention_across_a_change_of_master() -> None:
    """Replicas of another master are not kept: retention needs the same master."""
    m = Membership()
    steady = views("steady")
    m.adjust(decide(GROUP, steady, 2), steady, frozenset(), 0.0)
    moved = [with_master(v, addr=node(B), master_entry_addr=node(B), replicas=())
             for v in steady]
    d = decide(GROUP, moved, 2)
    assert d.master == node(B)
    out, _ = m.adjust(d, moved, frozenset({node(A)}), 1.0)
    assert out.replicas == frozenset()


def test_a_relisted_replica_is_decided_by_decide_again() -> None:
    """Once rediscovered (listed again), decide's own rules apply and nothing is added."""
    m = Membership()
    gap = without_replicas(views("steady"), {0, 1, 2})
    m.adjust(decide(GROUP, gap, 2), gap, frozenset({node(B)}), 0.0)
    dead = views("replica_dead")
    d = decide(GROUP, dead, 2)
    out, why = m.adjust(d, dead, frozenset({node(B)}), 1.0)
    assert out.replicas == d.replicas and why == []


def test_undecided_verdicts_pass_through() -> None:
    """No master, nothing to adjust."""
    d = dataclasses.replace(decide(GROUP, views("steady"), 2), master=None)
    assert Membership().adjust(d, views("steady"), frozenset(), 0.0) == (d, [])
    assert master(views("steady")[0]).addr == node(A)


def test_a_replica_listed_again_before_its_first_info_is_still_kept() -> None:
    """Rediscovered after the reset but not polled yet (no master host, link err): that entry
    says nothing against it, so the replica that served keeps serving."""
    steady = views("steady")
    fresh = [with_master(v, replicas=tuple(
        dataclasses.replace(r, master_addr=None, link_ok=False) for r in master(v).replicas))
        for v in steady]
    d = decide(GROUP, fresh, 2)
    assert node(B) not in d.replicas
    kept, _ = Membership().adjust(d, fresh, frozenset({node(B)}), 0.0)
    assert kept.replicas == {node(B)}
    dead = views("replica_dead")  # listed s_down: that is news, it leaves
    out, _ = Membership().adjust(decide(GROUP, dead, 2), dead, frozenset({node(B)}), 0.0)
    assert node(B) not in out.replicas


def test_entries_listed_again_before_their_first_info_count_for_nothing() -> None:
    """Rediscovery after a reset: two Sentinels list the serving replica again with nothing
    known yet (disconnected, no master host), the third already sees it healthy: it keeps
    serving (the fresh entries are no vote against it)."""
    steady = views("steady")
    healthy = steady[0].masters[GROUP].replicas[0]
    fresh = dataclasses.replace(healthy, flags=frozenset({"slave", "disconnected"}),
                                link_ok=False, master_addr=None)
    vs = [steady[0], with_master(steady[1], replicas=(fresh,)),
          with_master(steady[2], replicas=(fresh,))]
    d = decide(GROUP, vs, 2)
    assert node(B) not in d.replicas  # decide alone: 1 vote of the 2 needed
    kept, why = Membership().adjust(d, vs, frozenset({node(B)}), 0.0)
    assert node(B) in kept.replicas and "1 of 3 sentinels" in why[0]


def test_a_replica_back_to_serve_reads_must_say_it_is_linked_to_the_master() -> None:
    """A replica that stopped serving (here: s_down) and that every Sentinel sees healthy
    again (their view of its link is up to 10 s old) is asked itself: while it does not say it
    is a replica of the master with its link up (LOADING, resyncing after a restart) it is
    held, keeps its node (slot) and serves nothing; once it says so it serves. A replica
    never seen serving (new, or every one when the controller starts) and one that serves
    are not asked; one that cannot be asked comes back on the Sentinels' word."""
    vs = views("steady")
    d = decide(GROUP, vs, 2)
    assert d.replicas == {node(B)}
    asked: list[tuple[Address, Address]] = []

    def loading(replica: Address, master: Address) -> bool:
        asked.append((replica, master))
        return False

    m = Membership()
    first, _ = m.adjust(d, vs, frozenset(), 0.0, linked=loading)
    assert first.replicas == {node(B)} and asked == []  # never seen serving: not asked
    dead = views("replica_dead")
    gone, _ = m.adjust(decide(GROUP, dead, 2), dead, frozenset({node(B)}), 0.0,
                       linked=loading)
    assert gone.replicas == frozenset()
    held, _ = m.adjust(d, vs, frozenset(), 0.0, linked=loading)
    assert held.replicas == frozenset() and node(B) in held.nodes
    assert m.held == {GROUP: {node(B)}}
    assert asked == [(node(B), node(A))]
    back, _ = m.adjust(d, vs, frozenset(), 0.0, linked=lambda r, mm: True)
    assert back.replicas == {node(B)} and m.held == {}
    asked.clear()
    serving, _ = m.adjust(d, vs, frozenset({node(B)}), 0.0, linked=loading)
    assert serving.replicas == {node(B)} and asked == [] and m.held == {}
    m.adjust(decide(GROUP, dead, 2), dead, frozenset({node(B)}), 0.0, linked=loading)
    unasked, _ = m.adjust(d, vs, frozenset(), 0.0, linked=lambda r, mm: None)  # no answer
    assert unasked.replicas == {node(B)} and m.held == {}  # the Sentinels' word stands
