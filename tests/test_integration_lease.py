"""The write lease on real processes: a dead controller cannot let a returning old master take
writes, and a controller that loses the Sentinels' majority fences writes until it hears them
again (issue: "Reliability", item 5)."""

from __future__ import annotations

import threading
import time

import pytest
from itest_support import ControllerFactory, servers_state, wait_sentinels_agree, wait_state

from lab.daemon import ControllerDaemon
from lab.localstack import LocalStack
from lab.probes import Writer, read_back
from lab.wait import wait_until

pytestmark = pytest.mark.integration

G = "redis1"


def test_dead_controller_cannot_let_a_returning_old_master_take_writes(
    stack: LocalStack, controller: ControllerDaemon
) -> None:
    """The controller is SIGKILLed, then the master dies, Sentinel fails over and the old
    master comes back with its own config (a master for ~10 s) while HAProxy still has it
    ready: new write connections are refused once the lease ran out, so the old master
    acknowledges nothing and no write acknowledged after the master's death is lost."""
    old, new = stack.nodes[f"{G}a"], stack.nodes[f"{G}b"]
    stop = threading.Event()
    writer = Writer(stack.write_frontend(G), "lease", 0, stop, interval_s=0.002,
                    reconnect_each=True)
    writer.start()
    try:
        wait_until(lambda: len(writer.acked()) > 50, 10, "writes before the faults")
        controller.kill()
        stack.kill_node(f"{G}a")
        t_kill = time.time()
        wait_sentinels_agree(stack, G, f"{G}b", 40)
        stack.start_node(f"{G}a")
        t_back = time.time()
        assert stack.role(f"{G}a") == "master"
        assert servers_state(stack)[stack.write_backend(G)][f"{G}a"] == "ready", (
            "HAProxy keeps its last state: only the lease stands between clients and it")
        wait_until(lambda: stack.role(f"{G}a") == "slave", 40,
                   "Sentinel to convert the returning old master")
    finally:
        stop.set()
        writer.join(5)
    on_old = [w for w in writer.acked() if w.t >= t_back and w.node == str(old.addr)]
    assert on_old == [], f"{len(on_old)} writes acknowledged by the returned old master"
    after = [w for w in writer.acked() if w.t >= t_kill]
    kept = read_back(new.addr, [w.key for w in after])
    assert [w.key for w in after if kept.get(w.key) != str(w.seq)] == []


def test_losing_the_sentinel_majority_fences_writes_until_it_is_back(
    stack: LocalStack, make_controller: ControllerFactory
) -> None:
    """Two of three Sentinels stopped: the lease expires, the write backend is fenced (every
    server maint); restarted: the lease is renewed and the master takes writes again.
    (Stopped, not paused: a Sentinel paused for more than 2 s enters TILT for 30 s when it
    resumes, and the group stays undecided, and so fenced, meanwhile.)"""
    ctl = make_controller(stack)
    mark = ctl.mark()
    stack.kill_sentinel(1)
    stack.kill_sentinel(2)
    try:
        ctl.wait_event("write_lease_expired", 15, since=mark)
        wait_until(lambda: set(servers_state(stack)[stack.write_backend(G)].values())
                   == {"maint"}, 10, "write backend fenced")
    finally:
        stack.start_sentinel(1)
        stack.start_sentinel(2)
    ctl.wait_event("write_lease_renewed", 20, since=mark)
    wait_state(stack, {G: f"{G}a"}, timeout_s=20)
