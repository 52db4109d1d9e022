"""Property-based tests of whole reconcile passes (controller.loop.Controller) on hostile data.

Sentinels (tests/fakes.FakeSentinels) answer random views, or views parsed from mutated
captured replies as the reader would build them; HAProxies (tests/fakes.FakeHAProxy) hold
random states, sometimes unreachable; the replica being promoted answers ROLE at random.
Over a few passes no exception leaves a pass (the loop would catch it, but then no group
would be reconciled), and after each applied pass the write backend routes at most to the
elected master.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import structlog
from captured import GROUP, views
from fakes import FakeHAProxy, FakeSentinels
from hypothesis import event, given
from hypothesis import strategies as st
from strategies import (
    BACKEND_TEMPLATES,
    captured_groups,
    fuzz,
    haproxy_states,
    mutated,
    sentinel_views,
    view_lists,
)

from controller.loop import Controller
from controller.model import Address, AdminState, SentinelView
from controller.redis_nodes import NodeError, Role
from controller.sentinel_parse import SentinelReplyError, parse_groups
from controller.settings import Settings

SENTINELS = tuple(v.sentinel for v in views("steady"))
WRITE = BACKEND_TEMPLATES[0].format(master=GROUP)


class FakeNodes:
    """Redis nodes answering ROLE from a list of answers (NodeError for "error")."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers

    def roles(self, addrs: Collection[Address]) -> dict[Address, Role | NodeError]:
        out: dict[Address, Role | NodeError] = {}
        for addr in addrs:
            answer = self.answers.pop(0) if self.answers else "slave"
            out[addr] = (NodeError(f"{addr}: connection refused") if answer == "error"
                         else Role(answer))
        return out

    def forget(self, keep: set[Address]) -> None:
        pass


@st.composite
def parsed_view(draw: st.DrawFn) -> SentinelView:
    """A view as the reader builds it from one Sentinel's mutated replies: parsed, or an
    error view when the parser refuses them."""
    sentinel, head, replies = draw(captured_groups())
    replies = [draw(mutated(r, 2)) if draw(st.booleans()) else r for r in replies]
    try:
        view: SentinelView = parse_groups(sentinel, [GROUP], replies, head)[0]
        return view
    except SentinelReplyError as e:
        return SentinelView(sentinel, error=f"bad reply: {e}")


@st.composite
def view_lists_parsed(draw: st.DrawFn) -> list[SentinelView]:
    """Random views (see strategies.view_lists) with some parsed from mutated replies."""
    vs = draw(view_lists())
    for i in draw(st.lists(st.integers(0, len(vs) - 1), unique=True, max_size=2)):
        vs[i] = draw(parsed_view())
    return vs


STEP = st.fixed_dictionaries({
    "views": st.none() | view_lists_parsed(),  # None: the Sentinels say the same again
    "state": st.none() | haproxy_states(),
    "down": st.booleans(),
    "roles": st.lists(st.sampled_from(("master", "master", "slave", "error", "")), max_size=2),
    "apply": st.booleans(),
})
SETTINGS = st.builds(
    Settings,
    sentinels=st.just(SENTINELS),
    masters=st.just((GROUP,)),
    read_fallback_to_master=st.booleans(),
    early_promotion=st.sampled_from((True, True, True, False)),
    min_sentinels=st.integers(0, 3),
    max_replica_link_down_s=st.sampled_from((0.001, 60.0, 3600.0)),
)


def run_passes(settings: Settings, with_nodes: bool, steps: list[dict[str, Any]]) -> None:
    """Run one pass per step on the fakes; check the write backend after each applied one."""
    sentinels = FakeSentinels()
    haproxy = FakeHAProxy()
    nodes = FakeNodes([])
    controller = Controller(settings, sentinels, [haproxy], nodes=nodes if with_nodes else None,
                            on_change=lambda kind, data: None)
    with structlog.testing.capture_logs():
        for step in steps:
            if step["views"] is not None:
                sentinels.views = step["views"]
            if step["state"] is not None:
                haproxy.state_ = step["state"]
            haproxy.down = step["down"]
            nodes.answers = list(step["roles"])
            controller.poll_promotions()
            controller.probe_haproxies()
            result = controller.reconcile("fuzz", apply=step["apply"])
            (d,) = result.decisions
            event("decided" if d.master else "undecided")
            event(f"promoting={d.promoting is not None} early={d.early}")
            if haproxy.down or not step["apply"] or d.master is None:
                continue
            servers = haproxy.state().backends.get(WRITE, {})
            ready = [s for s in servers.values() if s.admin is AdminState.READY]
            assert len(ready) <= (0 if d.fenced else 1), ready
            assert all(s.matches(d.master) for s in ready), (d.master, ready)


@fuzz(150)
@given(SETTINGS, st.sampled_from((True, True, True, False)), st.lists(STEP, min_size=2, max_size=4))
def test_passes_on_hostile_views_and_states_never_raise_and_keep_one_writer(
    settings: Settings, with_nodes: bool, steps: list[dict[str, Any]]
) -> None:
    """A few passes over random views, HAProxy states and ROLE answers never raise, and after
    each applied pass a decided group's write backend routes to its master alone (to no
    server when fenced)."""
    run_passes(settings, with_nodes, steps)


FAILOVER = ("steady", "master_down", "selected", "selected", "promoted", "switched",
            "old_master_returned", "converted", "steady")


@st.composite
def failover_steps(draw: st.DrawFn) -> list[dict[str, Any]]:
    """The captured failover in order (some states skipped), each with up to one Sentinel's
    view replaced by a random or mutated-and-parsed one, random ROLE answers, and now and
    then a hostile HAProxy state or an unreachable HAProxy."""
    steps = []
    for state in FAILOVER:
        if draw(st.integers(0, 3)) == 0:
            continue
        vs = list(views(state))
        if draw(st.integers(0, 2)) == 0:
            vs[draw(st.integers(0, len(vs) - 1))] = draw(sentinel_views() | parsed_view())
        steps.append({
            "views": vs,
            "state": draw(haproxy_states()) if draw(st.integers(0, 4)) == 0 else None,
            "down": draw(st.integers(0, 9)) == 0,
            "roles": [draw(st.sampled_from(("master", "master", "slave", "error")))],
            "apply": draw(st.integers(0, 5)) > 0,
        })
    return steps


@fuzz(60)
@given(SETTINGS, failover_steps())
def test_a_perturbed_failover_never_raises_and_keeps_one_writer(
    settings: Settings, steps: list[dict[str, Any]]
) -> None:
    """Through the captured failover with one Sentinel's view made hostile now and then, ROLE
    answers at random and hostile HAProxy states, no pass raises and after each applied pass
    the write backend routes to the elected (or early-promoted) master alone."""
    run_passes(settings, True, steps)
