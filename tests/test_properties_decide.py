"""Property-based tests of controller.decide on random Sentinel views.

Views are captured ones with random epochs, flags, addresses and replicas, failover
leaders mid-promotion, unreachable and TILTed Sentinels and missing groups, with random
History and Rules. Whatever they say, `decide` never raises and never names a master that
no usable Sentinel at the top config-epoch named, except the leader's chosen replica once
it answered ROLE master (History.promoted).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from captured import GROUP
from hypothesis import given
from hypothesis import strategies as st
from strategies import HISTORIES, POOL, RULES, fuzz, sentinel_views, view_lists

from controller.decide import History, Rules, decide
from controller.model import Address, Decision, MasterView, SentinelView

Inputs = tuple[list[SentinelView], int, History, Rules]


@st.composite
def decide_inputs(draw: st.DrawFn) -> Inputs:
    """Views of 1-5 Sentinels (often a captured state's, partly replaced), a quorum, and a
    History whose `promoted` is often the replica some leader is promoting (as when the
    loop saw it answer ROLE master)."""
    vs = draw(view_lists())
    min_voters = draw(st.integers(1, len(vs) + 1))
    history = draw(HISTORIES)
    chosen = sorted({p for v in vs for m in v.masters.values() if (p := m.promoting)})
    promoted = draw(st.sampled_from(chosen)) if chosen else None
    if promoted is not None and draw(st.booleans()):
        history = History(history.seen_epoch, history.readers, promoted)
    if draw(st.booleans()):  # an epoch acted on before, close to what the views say
        epochs = sorted({m.epoch for v in vs for m in v.masters.values()}) or [0]
        seen = draw(st.sampled_from(epochs)) + draw(st.integers(-1, 1))
        history = History(seen, history.readers, history.promoted)
    return vs, min_voters, history, draw(RULES)


def at_top(vs: Sequence[SentinelView]) -> list[MasterView]:
    """The answers of usable Sentinels at the highest config-epoch among them, one per
    Sentinel (its ID, or else its address: the first answer of a Sentinel listed twice)."""
    by_id: dict[str, MasterView] = {}
    for v in vs:
        if v.usable and GROUP in v.masters:
            by_id.setdefault(v.identity, v.masters[GROUP])
    answers = list(by_id.values())
    if not answers:
        return []
    top = max(a.epoch for a in answers)
    return [a for a in answers if a.epoch == top]


def verdict(d: Decision) -> tuple[object, ...]:
    """Everything of a Decision but its wording."""
    return (d.master, d.epoch, d.replicas, d.fenced, d.voters, d.fallback, d.promoting,
            d.early, d.failover_timeout_ms)


@fuzz(300)
@given(decide_inputs())
def test_decide_names_only_a_master_a_top_epoch_sentinel_named(args: Inputs) -> None:
    """Never an exception; a master, when set, is the address the usable Sentinels at the top
    epoch named, or the leader's chosen replica once History says it answered master."""
    vs, min_voters, history, rules_ = args
    d = decide(GROUP, vs, min_voters, history, rules_)
    assert isinstance(d, Decision) and d.name == GROUP
    if d.master is None:
        return
    top = at_top(vs)
    named = {a.addr for a in top}
    promoting = {p for a in top if (p := a.promoting) is not None}
    assert len(named) == 1, f"sentinels at the top epoch disagree, yet {d.master} was chosen"
    if d.early:
        assert rules_.early_promotion and not d.fenced
        assert d.master == d.promoting == history.promoted and promoting == {d.master}
    else:
        assert named == {d.master}
    assert d.voters >= min_voters and d.epoch == top[0].epoch


@fuzz(200)
@given(decide_inputs())
def test_decide_never_goes_back_to_an_older_epoch_unless_every_sentinel_agrees(
    args: Inputs,
) -> None:
    """A verdict older than the epoch acted on before comes only from every configured
    Sentinel answering at that one epoch (a reset group)."""
    vs, min_voters, history, rules_ = args
    d = decide(GROUP, vs, min_voters, history, rules_)
    if d.master is not None and d.epoch < history.seen_epoch:
        answering = {v.identity for v in vs if v.usable and GROUP in v.masters}
        assert len(at_top(vs)) == len(answering), "an older epoch only when all answer at it"


@fuzz(200)
@given(decide_inputs())
def test_decide_readers_fencing_and_fallback_are_consistent(args: Inputs) -> None:
    """The master serves reads beside the replicas only as the one reader left that served
    them before (through its promotion), readers are replicas some top-epoch Sentinel lists,
    readers paused for a promotion leave the node taking over as the one reader, an o_down
    or failing-over master is fenced unless the promoted replica took over, and the read
    fallback is the master or the replica being promoted."""
    vs, min_voters, history, rules_ = args
    d = decide(GROUP, vs, min_voters, history, rules_)
    if d.master is None:
        assert not d.replicas and not d.fenced and d.fallback is None
        return
    top = at_top(vs)
    if d.master in d.replicas:
        assert d.replicas == {d.master} and d.master in history.readers
    if d.paused:  # paused for a promotion: the node taking over is the one reader meanwhile
        assert not d.paused & d.replicas and d.replicas == {d.promoting or d.master}
    assert d.replicas - {d.master} <= {r.addr for a in top for r in a.replicas}
    if any(a.odown or a.failing_over for a in top):
        assert d.fenced != d.early
    else:
        assert not d.fenced and not d.early
    assert d.fallback in (d.master, d.promoting)


@fuzz(150)
@given(decide_inputs(), st.randoms(use_true_random=False))
def test_decide_does_not_depend_on_the_order_of_the_sentinels(
    args: Inputs, rnd: random.Random
) -> None:
    """The verdict is the same whatever order the Sentinels' views come in."""
    vs, min_voters, history, rules_ = args
    shuffled = list(vs)
    rnd.shuffle(shuffled)
    assert verdict(decide(GROUP, shuffled, min_voters, history, rules_)) == verdict(
        decide(GROUP, vs, min_voters, history, rules_)
    )


@fuzz(100)
@given(st.lists(sentinel_views(), min_size=1, max_size=5), st.sampled_from(POOL))
def test_decide_without_usable_answers_is_undecided(
    vs: list[SentinelView], promoted: Address
) -> None:
    """When every Sentinel is unreachable or in TILT, no master is named, whatever the
    History says."""
    vs = [SentinelView(v.sentinel, v.masters, error="down") if i % 2 else
          SentinelView(v.sentinel, v.masters, tilt=True) for i, v in enumerate(vs)]
    d = decide(GROUP, vs, 1, History(promoted=promoted))
    assert d.master is None and d.voters == 0
