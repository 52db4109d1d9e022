"""controller.decide on real Sentinel views captured through a failover (tests/data).

Rare or impossible cases are built from captured views with one field changed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from captured import GROUP, A, B, load, master, node, selecting, views, with_master

from controller.decide import History, Rules, decidable, decide
from controller.model import Address, SentinelView


def down(v: SentinelView, why: str = "ConnectionError: Error 111 connecting") -> SentinelView:
    """`v`'s Sentinel as unreachable."""
    return SentinelView(sentinel=v.sentinel, error=why)


def test_steady_state() -> None:
    """Steady: the first master at epoch 0, its linked replica healthy, not fenced, 3 voters."""
    d = decide(GROUP, views("steady"), 2)
    assert (d.master, d.epoch, d.replicas, d.fenced, d.voters) == (
        node(A), 0, frozenset({node(B)}), False, 3
    )


def test_unknown_group_is_undecided() -> None:
    """A group no Sentinel answers for is undecided (no voters)."""
    d = decide("redis9", views("steady"), 2)
    assert d.master is None
    assert "0 of 3 sentinels answered, need 2" in d.reason


def test_leader_alone_at_new_epoch_wins_over_two_lagging_sentinels() -> None:
    """At +promoted-slave only the leader has epoch 1: its new master is followed at once."""
    vs = views("promoted")
    assert sorted(master(v).epoch for v in vs) == [0, 0, 1]
    d = decide(GROUP, vs, 2)
    assert (d.master, d.epoch, d.voters) == (node(B), 1, 3)
    assert "epoch 1 from 1 of 3 sentinels" in d.reason


def test_leader_failover_in_progress_entry_does_not_fence_the_new_master() -> None:
    """The leader's entry (old ip, o_down, failover_in_progress) describes the old master only."""
    vs = views("promoted")
    leader = next(v for v in vs if v.sentinel == load("promoted")["leader"])
    assert "o_down" in master(leader).flags
    d = decide(GROUP, vs, 2)
    assert not d.fenced
    assert d.replicas == frozenset(), "the promoted replica is the master, not a replica"


def test_lagging_sentinel_with_older_epoch_never_flips_back() -> None:
    """After the failover, Sentinels still at epoch 0 naming the old master are outvoted."""
    steady, converted = views("steady"), views("converted")
    for lagging in (1, 2):  # one or two of three still report the old state
        vs = steady[:lagging] + converted[lagging:]
        d = decide(GROUP, vs, 2, History(seen_epoch=1))
        assert (d.master, d.epoch) == (node(B), 1)


def test_only_lagging_sentinels_left_is_undecided_not_a_flip_back() -> None:
    """The leader that promoted goes away: the others' older epoch is not followed."""
    vs = views("promoted")
    leader = load("promoted")["leader"]
    vs = [down(v) if v.sentinel == leader else v for v in vs]
    d = decide(GROUP, vs, 2, History(seen_epoch=1))
    assert d.master is None
    assert "older than epoch 1" in d.reason


def test_older_epoch_followed_when_every_sentinel_agrees() -> None:
    """Every configured Sentinel at one older epoch (group reset) is followed."""
    d = decide(GROUP, views("steady"), 2, History(seen_epoch=5))
    assert (d.master, d.epoch) == (node(A), 0)


def test_same_epoch_different_addresses_is_undecided() -> None:
    """Two Sentinels at the top epoch naming different masters: no guess, undecided."""
    vs = views("converted")
    vs[2] = with_master(vs[2], addr=node(A))
    d = decide(GROUP, vs, 2)
    assert d.master is None
    assert d.epoch == 1
    assert f"disagree on the master: {node(A)}, {node(B)}" in d.reason


def test_fewer_than_min_voters_is_undecided_naming_the_missing() -> None:
    """With fewer usable answers than min_voters the group is undecided, naming who is missing."""
    vs = views("steady")
    vs = [vs[0], down(vs[1]), down(vs[2])]
    d = decide(GROUP, vs, 2)
    assert d.master is None
    assert d.voters == 1
    assert "1 of 3 sentinels answered, need 2" in d.reason
    assert vs[1].sentinel in d.reason and vs[2].sentinel in d.reason
    assert decide(GROUP, vs, 1).master == node(A)


def test_tilt_sentinel_is_skipped() -> None:
    """A Sentinel in TILT does not vote, even with a higher epoch naming another master."""
    vs = views("tilt")
    assert [v.tilt for v in vs] == [False, False, True]
    assert decide(GROUP, vs, 3).master is None
    d = decide(GROUP, vs, 2)
    assert (d.master, d.voters) == (node(B), 2)
    vs[2] = with_master(vs[2], epoch=7, addr=node(A))
    assert decide(GROUP, vs, 2).master == node(B)


def test_o_down_master_is_fenced() -> None:
    """A master a Sentinel flags o_down is fenced: decided, but no server may take writes."""
    d = decide(GROUP, views("master_down"), 2)
    assert (d.master, d.epoch, d.fenced) == (node(A), 0, True)
    assert "o_down" in d.reason


def test_failover_in_progress_before_promotion_fences_the_live_old_master() -> None:
    """Once the leader flags failover_in_progress and nothing is promoted yet, writes stop,
    so a live old master (manual SENTINEL FAILOVER) acks nothing that will be lost."""
    vs = views("steady")
    flags = master(vs[0]).flags | {"failover_in_progress"}
    vs[0] = with_master(vs[0], flags=flags)
    d = decide(GROUP, vs, 2)
    assert (d.master, d.fenced) == (node(A), True)
    assert "failover of master" in d.reason
    # After the promotion the leader names the new node: its flags describe the old entry.
    assert decide(GROUP, views("promoted"), 2).fenced is False


def test_returning_old_master_is_not_a_healthy_replica() -> None:
    """The old master back as master (role master, link err) is kept out of the replicas."""
    d = decide(GROUP, views("old_master_returned"), 2)
    assert (d.master, d.epoch) == (node(B), 1)
    assert d.replicas == frozenset()


def test_converted_old_master_is_a_healthy_replica() -> None:
    """Once converted and linked to the new master, the old master is a healthy replica."""
    d = decide(GROUP, views("converted"), 2)
    assert d.replicas == frozenset({node(A)})


def test_dead_replica_is_not_healthy() -> None:
    """A replica every Sentinel lists s_down is not healthy; the master is unchanged."""
    d = decide(GROUP, views("replica_dead"), 2)
    assert (d.master, d.replicas, d.fenced) == (node(A), frozenset(), False)


def test_replica_health_is_a_majority_vote_among_top_epoch_sentinels() -> None:
    """A replica is healthy when most Sentinels at the top epoch say so (2 of 3 yes, 1 no)."""
    steady, dead = views("steady"), views("replica_dead")
    one_says_dead = [dead[0], steady[1], steady[2]]
    assert decide(GROUP, one_says_dead, 2).replicas == frozenset({node(B)})
    two_say_dead = [dead[0], dead[1], steady[2]]
    assert decide(GROUP, two_say_dead, 2).replicas == frozenset()


def test_with_two_sentinels_left_one_healthy_vote_keeps_a_replica() -> None:
    """With one Sentinel gone, a replica stays ready when one of the two left sees it healthy."""
    steady, dead = views("steady"), views("replica_dead")
    gone = dataclasses.replace(steady[2], masters={}, error="connection refused")
    serving = History(readers=frozenset({node(B)}))
    assert decide(GROUP, [dead[0], steady[1], gone], 2, serving).replicas == {node(B)}
    assert decide(GROUP, [dead[0], dead[1], gone], 2, serving).replicas == frozenset()


def test_a_node_starts_serving_reads_only_with_half_of_the_groups_sentinels() -> None:
    """A node that does not serve reads yet needs at least half of the group's Sentinels (2
    of 3) even when a pass decided on two answers: one early "healthy" that the late third
    answer contradicts must not make it flap in and out; two of two start it."""
    steady, dead = views("steady"), views("replica_dead")
    pending = dataclasses.replace(steady[2], masters={}, error="no answer yet",
                                  problem="pending")
    assert decide(GROUP, [dead[0], steady[1], pending], 2).replicas == frozenset()
    assert decide(GROUP, [steady[0], steady[1], pending], 2).replicas == {node(B)}


def test_replica_votes_of_lagging_sentinels_do_not_count() -> None:
    """Only Sentinels at the top epoch vote on replicas: the leader alone decides at promotion."""
    vs = views("promoted")
    leader = load("promoted")["leader"]
    # Give the lagging Sentinels a healthy-looking replica of the new master: still not counted.
    healthy_a = master(views("converted")[0]).replicas
    vs = [v if v.sentinel == leader else with_master(v, replicas=healthy_a) for v in vs]
    assert decide(GROUP, vs, 2).replicas == frozenset()


def test_unusable_sentinel_error_is_carried_not_counted() -> None:
    """A Sentinel with a bad reply counts as missing, like an unreachable one."""
    vs = views("switched")
    vs[0] = dataclasses.replace(vs[0], error="bad reply: odd number of items")
    d = decide(GROUP, vs, 3)
    assert d.master is None and vs[0].sentinel in d.reason
    assert decide(GROUP, vs, 2).master == node(B)


# -- reads through a failover ----------------------------------------------------------

SERVING = History(readers=frozenset({node(B)}))


def stale(v: SentinelView, addr: Address, down_ms: int, **changes: Any) -> SentinelView:
    """`v` with the replica at `addr` reporting its master link down for `down_ms`."""
    reps = tuple(
        dataclasses.replace(r, link_ok=False, link_down_ms=down_ms, **changes)
        if r.addr == addr else r
        for r in master(v).replicas
    )
    return with_master(v, replicas=reps)


def test_master_down_keeps_the_replica_serving_reads() -> None:
    """While the master is o_down the replica keeps serving reads; nothing else may read."""
    d = decide(GROUP, views("master_down"), 2, SERVING)
    assert d.fenced
    assert d.replicas == frozenset({node(B)})
    assert d.fallback is None, "an o_down master serves nothing, not even reads"


def test_a_serving_replica_whose_link_broke_keeps_serving_until_the_limit() -> None:
    """A replica that served reads keeps serving with its link down up to the staleness limit,
    and leaves beyond it."""
    rules = Rules(max_link_down_ms=5000)
    vs = [stale(v, node(B), 4000) for v in views("master_down")]
    assert decide(GROUP, vs, 2, SERVING, rules).replicas == frozenset({node(B)})
    vs = [stale(v, node(B), 6000) for v in views("master_down")]
    assert decide(GROUP, vs, 2, SERVING, rules).replicas == frozenset()


def test_a_replica_with_a_broken_link_does_not_start_serving() -> None:
    """A replica not serving before needs a working link to the elected master to start: a
    node just converted and still resyncing (link down, data not yet replaced) stays out."""
    vs = [stale(v, node(B), 0) for v in views("steady")]
    assert decide(GROUP, vs, 2).replicas == frozenset()
    assert decide(GROUP, vs, 2, SERVING).replicas == frozenset({node(B)})


def test_link_down_time_unknown_is_not_fresh() -> None:
    """A negative master-link-down-time (the link was never up) never counts as fresh."""
    vs = [stale(v, node(B), -1000) for v in views("steady")]
    assert decide(GROUP, vs, 2, SERVING).replicas == frozenset()


def test_returning_old_master_never_serves_reads_even_if_it_did_before() -> None:
    """The old master back with role master is out of the read side, whatever the history."""
    d = decide(GROUP, views("old_master_returned"), 2,
               History(seen_epoch=1, readers=frozenset({node(A)})))
    assert node(A) not in d.replicas
    assert d.fallback == node(B)


def test_dead_serving_replica_leaves() -> None:
    """A serving replica Sentinel sees s_down leaves the read side at once."""
    d = decide(GROUP, views("replica_dead"), 2, SERVING)
    assert d.replicas == frozenset()
    assert d.fallback == node(A), "the live master is the read fallback"


def test_after_promotion_the_new_master_serves_reads_until_the_failover_ends() -> None:
    """At +promoted-slave the new master takes writes (the leader names it) while the leader
    still reconfigures replicas: it keeps serving reads in its replica slot (it served reads
    before) and is the read fallback; once the failover is over (every Sentinel switched) a
    2-node group's master serves reads as the fallback only."""
    d = decide(GROUP, views("promoted"), 2, SERVING)
    assert d.master == node(B) and not d.fenced
    assert d.replicas == {node(B)} and d.fallback == node(B)
    d = decide(GROUP, views("switched"), None, History(seen_epoch=1, readers=d.replicas))
    assert d.master == node(B) and d.replicas == frozenset() and d.fallback == node(B)


# -- following the promotion early -----------------------------------------------------


def test_leader_choice_is_named_while_writes_stay_fenced() -> None:
    """With the leader promoting B and B not yet seen as master, writes stay fenced and the
    verdict names B as the replica to watch."""
    d = decide(GROUP, selecting(), 2, SERVING)
    assert d.fenced and not d.early
    assert d.promoting == node(B)
    assert d.failover_timeout_ms == 10000, "the group's failover-timeout, as captured"


def test_promoted_replica_takes_writes_once_it_answers_master() -> None:
    """Once the caller saw B answer ROLE master, B is the write master (early), the old o_down
    master stays out, and B is the read fallback."""
    d = decide(GROUP, selecting(), 2, History(readers=frozenset({node(B)}), promoted=node(B)))
    assert (d.master, d.fenced, d.early) == (node(B), False, True)
    assert "answers ROLE master" in d.reason
    assert d.fallback == node(B)
    assert d.replicas == {node(B)}, "it served reads: it keeps serving them"


def test_promoted_replica_cut_off_by_its_own_slaveof_keeps_serving_reads() -> None:
    """The promoted replica's `SLAVEOF NO ONE` closes the other Sentinels' links to it
    (`disconnected` for a moment): it keeps serving reads; seen `s_down`, it stops."""
    history = History(readers=frozenset({node(B)}), promoted=node(B))

    def flagged(flag: str) -> list[SentinelView]:
        return [with_master(v, replicas=tuple(
            dataclasses.replace(r, flags=r.flags | {flag}) if r.addr == node(B) else r
            for r in master(v).replicas)) if i < 2 else v for i, v in enumerate(selecting())]

    assert decide(GROUP, flagged("disconnected"), 2, history).replicas == {node(B)}
    assert decide(GROUP, flagged("s_down"), 2, history).replicas == frozenset()


def test_early_promotion_off_waits_for_sentinel() -> None:
    """With early promotion off, B answering master changes nothing until Sentinel says so."""
    d = decide(GROUP, selecting(), 2, History(promoted=node(B)), Rules(early_promotion=False))
    assert d.fenced and d.master == node(A)


def test_a_master_answer_from_another_node_is_not_followed() -> None:
    """Only the replica the leader chose is followed: another node answering master is not."""
    d = decide(GROUP, selecting(), 2, History(promoted=node(A)))
    assert d.fenced and not d.early


def test_leader_lost_before_confirming_fences_again() -> None:
    """When the leader's view is gone (it died, or the failover was aborted), nobody names B:
    the group is fenced again even though B answered master."""
    vs = selecting()
    vs[-1] = down(vs[-1])
    d = decide(GROUP, vs, 2, History(promoted=node(B)))
    assert d.fenced and d.promoting is None and d.master == node(A)


def selected(name: str) -> Address:
    """A node of the `selected` capture (its own stack, so its own ports)."""
    host, port = str(load("selected")["nodes"][name]).rsplit(":", 1)
    return Address(host, int(port))


def test_captured_selection_window_fences_and_names_the_chosen_replica() -> None:
    """Real replies between the leader's `send_slaveof_noone` and its `+promoted-slave`: the
    old master is o_down and fenced; the leader's `promoted` flag names the replica to watch;
    that replica keeps serving reads meanwhile."""
    d = decide(GROUP, views("selected"), 2, History(readers=frozenset({selected(B)})))
    assert d.fenced and d.master == selected(A)
    assert d.promoting == selected(B)
    assert d.replicas == frozenset({selected(B)})


def test_captured_selection_followed_as_soon_as_the_replica_answers_master() -> None:
    """Same real replies, once the chosen replica answered ROLE master: it takes writes."""
    d = decide(GROUP, views("selected"), 2, History(promoted=selected(B)))
    assert (d.master, d.fenced, d.early) == (selected(B), False, True)


def with_third_node(vs: list[SentinelView], c: Address) -> list[SentinelView]:
    """The `selected` views with a third node `c` listed as another replica of the old
    master, not chosen by the leader (a copy of the chosen replica's real entry)."""
    out = []
    for v in vs:
        m = master(v)
        b = next(r for r in m.replicas if r.addr == selected(B))
        third = dataclasses.replace(b, addr=c, flags=b.flags - {"promoted"})
        out.append(with_master(v, replicas=(*m.replicas, third)))
    return out


def test_replicas_sentinel_will_reconfigure_take_no_new_reads_during_the_promotion() -> None:
    """3 nodes: while the leader promotes B, the other replica C still follows the old master
    and Sentinel is about to send it SLAVEOF (which closes its connections): B keeps serving
    reads, C takes no new ones; once C replicates from B, C serves and B leaves."""
    c = Address(selected(B).host.rsplit(".", 1)[0] + ".4", selected(B).port)
    both = History(readers=frozenset({selected(B), c}))
    vs = with_third_node(views("selected"), c)
    d = decide(GROUP, vs, 2, both)
    assert d.fenced and d.promoting == selected(B)
    assert d.replicas == {selected(B)} and d.paused == {c}
    follows = [with_master(v, replicas=tuple(
        dataclasses.replace(r, master_addr=selected(B), link_ok=True, link_down_ms=0)
        if r.addr == c else r for r in master(v).replicas)) for v in vs]
    early = History(readers=d.replicas | d.paused, promoted=selected(B))
    d = decide(GROUP, follows, 2, early)
    assert d.master == selected(B) and d.replicas == {c} and not d.paused


def test_an_aborted_promotion_gives_the_paused_replicas_back_at_once() -> None:
    """The leader drops its choice (failover aborted) while C was paused: C's standing as a
    reader was kept, so it serves again with the old master's other replica, not after a
    fresh start."""
    c = Address(selected(B).host.rsplit(".", 1)[0] + ".4", selected(B).port)
    vs = with_third_node(views("selected"), c)
    d = decide(GROUP, vs, 2, History(readers=frozenset({selected(B), c})))
    assert d.paused == {c}
    aborted = [with_master(v, replicas=tuple(
        dataclasses.replace(r, flags=r.flags - {"promoted"}) for r in master(v).replicas))
        for v in vs]
    d = decide(GROUP, aborted, 2, History(readers=d.replicas | d.paused))
    assert d.promoting is None and d.replicas == {selected(B), c} and not d.paused


def test_without_a_promotion_replicas_of_a_dead_master_keep_serving() -> None:
    """Before the leader chose a replica, every replica keeps serving reads (none of them is
    the successor yet)."""
    c = Address(selected(B).host.rsplit(".", 1)[0] + ".4", selected(B).port)
    vs = [with_master(v, replicas=tuple(dataclasses.replace(r, flags=r.flags - {"promoted"})
                                        for r in master(v).replicas))
          for v in with_third_node(views("selected"), c)]
    d = decide(GROUP, vs, 2, History(readers=frozenset({selected(B), c})))
    assert d.promoting is None and d.replicas == {selected(B), c}


# -- one vote per Sentinel -------------------------------------------------------------


def alias(v: SentinelView, address: str) -> SentinelView:
    """The same Sentinel (same ID) listed once more, at another address."""
    return dataclasses.replace(v, sentinel=address)


def test_a_sentinel_listed_twice_votes_once() -> None:
    """`A A B` with B dead and A stale: A's two entries are one vote, 1 of 3 is no majority,
    so the stale answer is not followed."""
    s1 = views("steady")[0]
    s2 = views("switched")[1]
    d = decide(GROUP, [s1, alias(s1, "alias-of-s1:1"), down(s2)], None, History(seen_epoch=0))
    assert d.master is None
    assert "1 of 3 sentinels answered, need 2" in d.reason
    assert "unreachable" in d.reason


def test_duplicates_do_not_inflate_the_majority() -> None:
    """`A A B C` with A dead: B and C are a majority of the group's 3 Sentinels."""
    vs = views("switched")
    d = decide(GROUP, [down(vs[0]), down(alias(vs[0], "alias:1")), vs[1], vs[2]])
    assert d.master == node(B), d.reason


def test_group_size_comes_from_the_sentinels_themselves() -> None:
    """One configured Sentinel knows 2 others: alone it is 1 of 3, not a majority; with a
    second (discovered) one it is."""
    vs = views("steady")
    assert decide(GROUP, vs[:1]).master is None
    assert decide(GROUP, vs[:2]).master == node(A)


def test_missing_votes_are_named_by_reason() -> None:
    """Each Sentinel whose vote is missing is named with its own reason: TILT, not a
    Sentinel, not monitoring the group; never a plain 'no answer'."""
    vs = views("steady")
    tilted = dataclasses.replace(vs[0], tilt=True)
    redis = SentinelView(vs[1].sentinel, error="not a Sentinel: unknown command 'SENTINEL'",
                         problem="not_sentinel")
    other = dataclasses.replace(vs[2], masters={})
    d = decide(GROUP, [tilted, redis, other], None)
    assert d.master is None
    assert f"in TILT: {vs[0].sentinel}" in d.reason
    assert f"not a Sentinel: {vs[1].sentinel}" in d.reason
    assert f"does not monitor {GROUP}: {vs[2].sentinel}" in d.reason


# -- enough to decide before every Sentinel answered -------------------------------------


def test_decidable_when_a_majority_agrees_at_the_top_epoch() -> None:
    """Two of three Sentinels naming the same master at the same epoch settle the group: the
    pass need not wait for the third; with one answer it must."""
    vs = views("steady")
    assert decidable(GROUP, vs[:2], pending=1)
    assert not decidable(GROUP, vs[:1], pending=2)
    assert decidable(GROUP, vs, pending=0)


def test_not_decidable_while_the_answers_disagree_on_the_epoch() -> None:
    """At +promoted-slave the leader alone has the new epoch: its answer and a lagging one are
    not a majority at the top epoch, so the pass waits for the third Sentinel (which may agree
    with either)."""
    vs = views("promoted")
    leader = next(v for v in vs if master(v).epoch == 1)
    lagging = next(v for v in vs if master(v).epoch == 0)
    assert not decidable(GROUP, [leader, lagging], pending=1)
    assert decidable(GROUP, [leader, lagging], pending=0)


def test_decidable_when_the_pending_ones_cannot_make_a_majority() -> None:
    """One answer and one pending can still make 2 of 3: the pass waits. When even every
    pending answer could not make the votes needed (3 needed, one Sentinel unreachable, one
    pending), the verdict is undecided either way: no reason to wait."""
    vs = views("steady")
    assert not decidable(GROUP, [vs[0], down(vs[1])], pending=1)
    assert decidable(GROUP, [vs[0], down(vs[1]), down(vs[2])], pending=0)
    assert decidable(GROUP, [down(vs[1])], pending=1, min_voters=3)


def test_decidable_follows_min_voters() -> None:
    """With `min_sentinels` 3, two agreeing answers are not enough while one is pending."""
    vs = views("steady")
    assert not decidable(GROUP, vs[:2], pending=1, min_voters=3)
    assert decidable(GROUP, vs[:2], pending=1, min_voters=2)


def test_tilt_answer_does_not_count_towards_enough() -> None:
    """A Sentinel in TILT answered but does not vote: it cannot make the majority."""
    vs = views("steady")
    tilted = dataclasses.replace(vs[1], tilt=True)
    assert not decidable(GROUP, [vs[0], tilted], pending=1)


def test_a_fence_is_never_lifted_before_every_sentinel_answered() -> None:
    """The group is fenced (the master is o_down for the Sentinel that saw it): two answers
    that do not flag it yet would route writes to it again, so the pass waits for the third;
    with the fence kept, or a new master elected, the two answers are enough."""
    vs = views("master_down")
    flagged = [v for v in vs if master(v).odown]
    quiet = [v for v in vs if not master(v).odown]
    assert flagged and len(quiet) >= 2, "captured: one Sentinel flags o_down first"
    fenced = decide(GROUP, vs, 2)
    assert fenced.fenced
    assert not decidable(GROUP, quiet[:2], 1, before=fenced)
    assert decidable(GROUP, quiet[:2], 1, before=decide(GROUP, views("steady"), 2))
    assert decidable(GROUP, views("switched")[:2], 1, before=fenced)


def test_an_early_promotion_is_not_left_before_every_sentinel_answered() -> None:
    """Writes follow the replica the leader promotes (it answered ROLE master): two lagging
    answers without the leader's would fence again; they wait for the leader's answer."""
    doc = load("selected")
    vs = views("selected")
    chosen = node_in(doc, B)
    promoted = decide(GROUP, vs, 2, History(promoted=chosen))
    assert promoted.early and promoted.master == chosen
    others = [v for v in vs if v.sentinel != doc["leader"]]
    assert not decidable(GROUP, others, 1, before=promoted,
                         history=History(promoted=chosen))


def node_in(doc: dict[str, Any], name: str) -> Address:
    host, _, port = str(doc["nodes"][name]).rpartition(":")
    return Address(host, int(port))


# -- the other replicas' reconfiguration (3-node group, captured) ----------------------


def reconf_node(state: str, which: str) -> Address:
    """The new master ("new") or the other replica ("other") of a sentinel_reconf* capture."""
    doc = load(state)
    leader = master(next(v for v in views(state) if v.sentinel == doc["leader"]))
    return leader.addr if which == "new" else next(
        r.addr for r in leader.replicas if r.addr != leader.addr)


def test_replicas_not_yet_reconfigured_take_no_new_reads_after_the_promotion() -> None:
    """3 nodes, real replies after the leader's +promoted-slave (`reconf_slaves`, only the
    leader at the new epoch): the new master takes writes and keeps serving reads; the other
    replica, still following the dead master, is paused (Sentinel's `SLAVEOF` to it, with its
    `CLIENT KILL`, is due) instead of taking new reads it would lose."""
    new, other = reconf_node("reconf", "new"), reconf_node("reconf", "other")
    d = decide(GROUP, views("reconf"), None, History(readers=frozenset({new, other})))
    assert d.master == new and not d.fenced
    assert d.replicas == {new} and d.paused == {other}


def test_a_replica_being_reconfigured_takes_no_new_reads() -> None:
    """Real replies once the leader sent the other replica `SLAVEOF` (`reconf_sent`; the
    other Sentinels switched and list it anew): the new master still serves the reads; the
    other replica takes none until a majority sees it replicate from the new master."""
    new, other = reconf_node("reconf_sent", "new"), reconf_node("reconf_sent", "other")
    d = decide(GROUP, views("reconf_sent"), None, History(seen_epoch=1, readers=frozenset(
        {new, other})))
    assert d.master == new and not d.fenced
    assert d.replicas == {new} and other not in d.replicas
