"""Sentinel peers on real processes: one vote per Sentinel whatever address it is listed at,
one configured Sentinel is enough (the others are discovered), and a peer that is not a
Sentinel, one that does not monitor the group and one in TILT are each named for what they
are (issue: "Reliability", items 1-3)."""

from __future__ import annotations

import json
import time

import pytest
from itest_support import ControllerFactory, run_cli, wait_state

from lab.daemon import ControllerDaemon
from lab.localstack import LocalStack
from lab.wait import wait_until

pytestmark = pytest.mark.integration

G = "redis1"


def test_sentinel_listed_twice_gets_one_vote(
    stack: LocalStack, make_controller: ControllerFactory
) -> None:
    """`--sentinel A,A,B` with B and the third Sentinel paused: A alone is 1 of the group's 3
    Sentinels, not a majority; the duplicate is reported once."""
    a, b = (str(x) for x in stack.sentinel_addrs[:2])
    ctl = make_controller(stack, wait=False, sentinels=[a, a, b])
    wait_state(stack, {G: f"{G}a"})
    ctl.wait_event("sentinel_duplicate", 20)
    mark = ctl.mark()
    stack.pause_sentinel(1)
    stack.pause_sentinel(2)
    try:
        ev = ctl.wait_event("undecided", 20, since=mark, group=G)
        assert "1 of 3 sentinels answered, need 2" in ev["reason"], ev
    finally:
        stack.resume_sentinel(1)
        stack.resume_sentinel(2)
    assert len(ctl.events("sentinel_duplicate")) == 1


def test_one_configured_sentinel_finds_the_others(
    stack: LocalStack, make_controller: ControllerFactory
) -> None:
    """With only the first Sentinel configured the daemon discovers the other two, reads and
    watches them, and applies the state with all three votes."""
    ctl = make_controller(stack, sentinels=[str(stack.sentinel_addrs[0])])
    found = {e["sentinel"] for e in ctl.events("sentinel_discovered")}
    assert found == {str(a) for a in stack.sentinel_addrs[1:]}
    wait_until(lambda: ctl.events("pass", sentinels=3, sentinels_ok=3), 20,
               "a pass with all three Sentinels")


def test_status_names_each_missing_vote_for_what_it_is(stack: LocalStack) -> None:
    """`status` with a plain Redis given as a Sentinel and a group nobody monitors says
    'not a Sentinel' and 'does not monitor', and exits 3 (undecided), never 'no answer'."""
    redis_node = str(stack.nodes[f"{G}b"].addr)
    sentinels = [str(stack.sentinel_addrs[0]), redis_node]
    res = run_cli(stack, "status", "--json", "--master", "nosuch", sentinels=sentinels)
    assert res.returncode == 3, res.stdout + res.stderr
    report = json.loads(res.stdout)
    (group,) = report["groups"]
    reason = group["decision"]["reason"]
    assert "not a Sentinel: " + redis_node in reason, reason
    assert f"does not monitor nosuch: {stack.sentinel_addrs[0]}" in reason, reason
    assert "no answer" not in reason
    problems = {v["sentinel"]: v["problem"] for v in report["sentinels"]}
    assert problems[redis_node] == "not_sentinel"


def test_daemon_logs_a_plain_redis_given_as_a_sentinel(
    stack: LocalStack, make_controller: ControllerFactory
) -> None:
    """A plain Redis among the Sentinels is logged once as `sentinel_unusable` with state
    not_sentinel; the real Sentinels still decide."""
    redis_node = str(stack.nodes[f"{G}b"].addr)
    ctl: ControllerDaemon = make_controller(
        stack, sentinels=[*(str(a) for a in stack.sentinel_addrs), redis_node])
    ev = ctl.wait_event("sentinel_unusable", 20, sentinel=redis_node)
    assert ev["state"] == "not_sentinel", ev
    assert "unknown command" in ev["error"]


def test_tilt_is_named_tilt(stack: LocalStack, make_controller: ControllerFactory) -> None:
    """A Sentinel paused long enough to enter TILT is logged as `sentinel_unusable` with
    state tilt once it answers again (not as unreachable)."""
    ctl = make_controller(stack)
    s2 = str(stack.sentinel_addrs[2])
    stack.pause_sentinel(2)
    paused_at = time.monotonic()
    try:
        wait_until(lambda: ctl.events("sentinel_unusable", sentinel=s2), 20,
                   "the paused Sentinel reported unusable")
        # Sentinel enters TILT only when its timer stalled for more than 2 s (the daemon may
        # notice the pause sooner than that): keep it paused long enough.
        time.sleep(max(0.0, paused_at + 3.0 - time.monotonic()))
    finally:
        stack.resume_sentinel(2)
    # The Sentinel's timer stalled for > 2 s while paused: it enters TILT for 30 s.
    ev = wait_until(lambda: ctl.events("sentinel_unusable", sentinel=s2, state="tilt"), 20,
                    "the resumed Sentinel reported in TILT")
    assert ev
