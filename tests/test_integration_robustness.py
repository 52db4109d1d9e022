"""The CLI against a live stack, and the daemon facing lost quorum and forged Sentinel input.

Real processes only (LocalStack + `python -m controller`); the daemon's log is checked at
teardown by conftest (no `unexpected_error`, no traceback, clean SIGTERM stop).
"""

from __future__ import annotations

import json

import pytest
import requests
from itest_support import (
    ControllerFactory,
    expected_state,
    node_behind_write,
    run_cli,
    servers_state,
    wait_state,
)

from lab.daemon import ControllerDaemon
from lab.localstack import LocalStack, free_port
from lab.wait import wait_until

pytestmark = pytest.mark.integration


def test_status_and_reconcile_exit_codes_against_live_stack(stack: LocalStack) -> None:
    """`status` and `reconcile --dry-run` exit 1 on drift and change nothing, `reconcile`
    applies the state, then both exit 0; `status` shows every sentinel."""
    initial = servers_state(stack)  # every server `disabled` in the config: all maint
    assert all(a == "maint" for servers in initial.values() for a in servers.values())

    st = run_cli(stack, "status", "--json")
    assert st.returncode == 1, st.stdout + st.stderr
    report = json.loads(st.stdout)
    assert report["exit_code"] == 1
    (group,) = report["groups"]
    assert group["group"] == "redis1"
    assert group["decision"]["master"] == str(stack.nodes["redis1a"].addr)
    shown = [v["sentinel"] for v in group["sentinels"]]
    assert shown == [str(a) for a in stack.sentinel_addrs]
    assert all(v["error"] is None and v["epoch"] == 0 for v in group["sentinels"])
    drift = [c["command"] for h in group["haproxy"] for c in h["drift"]]
    assert "set server redis1_master/redis1a state ready" in drift

    human = run_cli(stack, "status")
    assert human.returncode == 1
    for a in stack.sentinel_addrs:
        assert str(a) in human.stdout

    dry = run_cli(stack, "reconcile", "--dry-run", "--json")
    assert dry.returncode == 1, dry.stdout + dry.stderr
    assert {c["result"] for c in json.loads(dry.stdout)["commands"]} == {"dry-run"}
    assert servers_state(stack) == initial

    applied = run_cli(stack, "reconcile", "--json")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert {c["result"] for c in json.loads(applied.stdout)["commands"]} == {"ok"}
    assert servers_state(stack) == expected_state(stack, {"redis1": "redis1a"})

    for argv in (("status", "--json"), ("reconcile", "--dry-run", "--json"), ("status",)):
        res = run_cli(stack, *argv)
        assert res.returncode == 0, (argv, res.stdout, res.stderr)
    assert json.loads(run_cli(stack, "reconcile", "--dry-run", "--json").stdout)["commands"] == []


def test_two_sentinels_down_is_undecided_and_haproxy_kept(
    stack: LocalStack, make_controller: ControllerFactory
) -> None:
    """With the write lease off and 2 of 3 sentinels stopped the daemon logs `undecided` and
    issues no HAProxy command, and carries on once they are back (with the lease on, the
    writes are fenced instead: tests/test_integration_lease.py)."""
    controller = make_controller(stack, "--no-write-lease")
    before = servers_state(stack)
    mark = controller.mark()
    stack.kill_sentinel(1)
    stack.kill_sentinel(2)
    ev = controller.wait_event("undecided", since=mark, group="redis1")
    assert "1 of 3" in ev["reason"], ev
    later = controller.mark()
    wait_until(lambda: len(controller.events("pass", since=later, undecided=1)) >= 3, 20,
               "three more undecided passes")
    assert servers_state(stack) == before
    assert controller.events("server_state_changed", since=mark) == []
    assert node_behind_write(stack, "redis1") == "redis1a"

    back = controller.mark()
    stack.start_sentinel(1)
    stack.start_sentinel(2)
    wait_until(lambda: controller.events("pass", since=back, undecided=0), 30,
               "a decided pass after the sentinels restart")
    assert servers_state(stack) == before
    assert controller.events("server_state_changed", since=mark) == []


def test_forged_hello_bad_event_does_not_kill_the_daemon(
    stack: LocalStack, controller: ControllerDaemon
) -> None:
    """A forged `__sentinel__:hello` (accepted from anyone) that makes Sentinel publish an
    unparseable `+switch-master` is logged as `bad_event`; the daemon keeps HAProxy as is
    and keeps reconciling."""
    master = stack.nodes["redis1a"]
    mark = controller.mark()
    garbage = ["garbage", "a,b,c,d,e,f,g,h", "x" * 5000, "\x01\x02,,,,,,,"]
    for payload in garbage:  # malformed: Sentinel ignores them
        assert stack.sentinel_command(0, "PUBLISH", "__sentinel__:hello", payload) == 1
    # Well-formed, from a made-up sentinel, announcing epoch 100 with a master address that
    # contains a space: Sentinel publishes `+switch-master redis1 <ip> <port> <ip> x <port>`
    # (6 words) before failing to resolve the address, so the master does not move.
    forged = f"127.0.0.99,1,{'a' * 40},0,redis1,{master.host} x,{master.port},100"
    assert stack.sentinel_command(0, "PUBLISH", "__sentinel__:hello", forged) == 1
    ev = controller.wait_event("bad_event", timeout_s=30, since=mark)
    assert "+switch-master" in ev["error"], ev
    assert controller.alive()
    assert stack.master_addr(0, "redis1") == master.addr
    wait_state(stack, {"redis1": "redis1a"}, timeout_s=10)
    # Still reconciling: a hand edit is undone.
    edit = controller.mark()
    assert stack.haproxy_command("set server redis1_master/redis1a state maint") == "\n"
    controller.wait_event("server_state_changed", since=edit, backend="redis1_master",
                          server="redis1a", to="ready")
    wait_state(stack, {"redis1": "redis1a"}, timeout_s=10)
    assert node_behind_write(stack, "redis1") == "redis1a"


def test_group_removed_from_the_sentinels_one_by_one_is_forgotten_everywhere(
    stack: LocalStack, make_controller: ControllerFactory
) -> None:
    """A group removed from the Sentinels one after the other (a pass in between) is
    forgotten once no Sentinel monitors it: one `group_forgotten` line, and nothing of it is
    left in the metrics (no verdict, no write server, not undecided, so `/healthz` cannot
    report it for ever); the other group is untouched."""
    address = f"127.0.0.1:{free_port(['127.0.0.1'])}"
    ctl = make_controller(stack, "--metrics-address", address)
    ghost_port = stack.layout.redis_port  # nothing listens on 127.0.0.99: a dead master
    for i in range(stack.layout.sentinels):
        assert stack.sentinel_command(i, "SENTINEL", "MONITOR", "ghost", "127.0.0.99",
                                      ghost_port, 2) == "OK"
    ctl.wait_event("master_known", group="ghost")

    def metrics() -> str:
        return requests.get(f"http://{address}/metrics", timeout=5).text

    wait_until(lambda: 'group="ghost"' in metrics(), 10, "the group in the metrics")
    for i in range(stack.layout.sentinels - 1):
        assert stack.sentinel_command(i, "SENTINEL", "REMOVE", "ghost") == "OK"
    mark = ctl.mark()
    ctl.wait_event("pass", since=mark)
    assert stack.sentinel_command(stack.layout.sentinels - 1, "SENTINEL", "REMOVE",
                                  "ghost") == "OK"
    ctl.wait_event("group_forgotten", group="ghost")
    wait_until(lambda: 'group="ghost"' not in metrics(), 10, "the group gone from the metrics")
    assert requests.get(f"http://{address}/healthz", timeout=5).status_code == 200
    assert servers_state(stack) == expected_state(stack, {"redis1": "redis1a"})


def test_group_removed_from_every_sentinel_is_forgotten(
    stack: LocalStack, make_controller: ControllerFactory
) -> None:
    """A group an operator adds to and then removes from every Sentinel (`SENTINEL REMOVE`)
    is forgotten by the daemon instead of staying undecided for ever."""
    ctl = make_controller(stack, "--log-level", "debug")
    ghost_port = stack.layout.redis_port  # nothing listens on 127.0.0.99: a dead master
    for i in range(stack.layout.sentinels):
        assert stack.sentinel_command(i, "SENTINEL", "MONITOR", "ghost", "127.0.0.99",
                                      ghost_port, 2) == "OK"
    ctl.wait_event("master_known", group="ghost")
    for i in range(stack.layout.sentinels):
        assert stack.sentinel_command(i, "SENTINEL", "REMOVE", "ghost") == "OK"
    # The removals are not atomic across Sentinels: a pass between two of them may rightly
    # find the group undecided. What matters is what follows the first pass after the last.
    after = ctl.mark()
    wait_until(lambda: ctl.events("pass", since=after, trigger="resync"), 20,
               "a periodic pass after the removal")
    removed = ctl.mark()
    wait_until(lambda: len(ctl.events("pass", since=removed, trigger="resync")) >= 2, 20,
               "two more periodic passes")
    last = ctl.events("pass", since=removed, trigger="resync")[-1]
    assert last["groups"] == 1 and last["undecided"] == 0, last
    assert ctl.events("undecided", since=removed) == []
    assert servers_state(stack) == expected_state(stack, {"redis1": "redis1a"})
