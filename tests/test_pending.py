"""controller.pending: hints merged into the next passes (per group, oldest first, bounded
per pass, at most one full pass), pure."""

from __future__ import annotations

from captured import GROUP, views

from controller.pending import Pending


def test_hints_for_one_group_merge_into_one_entry_with_the_earliest_time() -> None:
    """Three hints about one group (arriving out of order) make one entry, timed and named by
    the earliest, so its latency counts from the first event."""
    p = Pending()
    p.group("g1", "+sdown", 10.0)
    p.group("g1", "+odown", 9.0)
    p.group("g1", "+switch-master", 12.0)
    batch = p.take_groups(10)
    assert batch is not None
    assert batch.groups == {"g1": 9.0} and batch.trigger == "+odown"
    assert p.take_groups(10) is None


def test_a_burst_for_many_groups_is_served_in_few_passes_none_lost() -> None:
    """250 groups named by 3 hints each are served by passes of at most 100 groups, in the
    order of their first hint, each group exactly once."""
    p = Pending()
    for k in range(3):
        for i in range(250):
            p.group(f"g{i}", "+switch-master", 100.0 + i + k * 0.001)
    served: list[str] = []
    passes = 0
    while (batch := p.take_groups(100)) is not None:
        passes += 1
        assert len(batch.groups) <= 100
        served += list(batch.groups)
    assert passes == 3
    assert served == [f"g{i}" for i in range(250)]


def test_hints_arriving_between_passes_go_to_the_next_one() -> None:
    """A group named again after its pass was taken is served by a later pass (nothing is
    dropped because a pass is running)."""
    p = Pending()
    p.group("g1", "+sdown", 1.0)
    first = p.take_groups(10)
    p.group("g1", "+switch-master", 2.0)
    p.group("g2", "+switch-master", 2.5)
    second = p.take_groups(10)
    assert first is not None and second is not None
    assert first.groups == {"g1": 1.0}
    assert second.groups == {"g1": 2.0, "g2": 2.5}


def test_full_pass_triggers_merge_into_one() -> None:
    """Any number of hints naming no group make one full pass, with the earliest trigger;
    after it is taken none is due until the next hint."""
    p = Pending()
    p.full("sentinel_disconnected", 5.0)
    p.full("sentinel_connected", 4.0)
    p.full("resync", 6.0)
    assert p.has_full and not p.has_groups
    assert p.take_full() == ("sentinel_connected", 4.0)
    assert p.take_full() is None and not p.has_full


def test_late_answers_carried_per_sentinel_across_groups() -> None:
    """Late answers of one Sentinel for two groups become one view per Sentinel in the batch
    (the pass counts them until that Sentinel answers again)."""
    slow = views("switched")[2]
    other = slow.__class__(slow.sentinel, masters={"g2": slow.masters[GROUP]},
                           myid=slow.myid)
    p = Pending()
    p.group(GROUP, "late_answer", 1.0, {slow.sentinel: slow})
    p.group("g2", "late_answer", 1.0, {slow.sentinel: other})
    batch = p.take_groups(10)
    assert batch is not None
    assert set(batch.carry) == {slow.sentinel}
    assert set(batch.carry[slow.sentinel].masters) == {GROUP, "g2"}
