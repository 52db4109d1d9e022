"""controller.loop.Controller bookkeeping that needs no process: verdict changes, hints and
HAProxy identity, fed with verdicts decided from the captured Sentinel replies (tests/data).

The Controller gets a real SentinelReader that is never asked anything (reading needs real
Sentinels: that is the integration tests' job); nothing is mocked.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from captured import GROUP, A, B, node, views

from controller.decide import decide
from controller.loop import Controller
from controller.model import Decision, HAProxyInfo
from controller.sentinel import Auth, Hint, SentinelAddr, SentinelReader
from controller.sentinel_parse import parse_event
from controller.settings import Settings

Emitted = list[tuple[str, dict[str, object]]]


@pytest.fixture
def emitted() -> Emitted:
    return []


@pytest.fixture
def controller(emitted: Emitted) -> Iterator[Controller]:
    settings = Settings(sentinels=("127.0.0.1:1",), masters=(GROUP,))
    reader = SentinelReader([SentinelAddr("127.0.0.1", 1)], Auth(), [GROUP])
    c = Controller(settings, reader, [], on_change=lambda kind, data: emitted.append((kind, data)))
    yield c
    reader.close()


def verdict(state: str, min_voters: int = 2) -> Decision:
    return decide(GROUP, views(state), min_voters)


def test_failover_sequence_emits_each_change_once(
    controller: Controller, emitted: Emitted
) -> None:
    """Through a whole captured failover: one failover, replica lost/back, nothing else."""
    for state in ("steady", "replica_dead", "steady", "master_down", "promoted", "switched",
                  "old_master_returned", "converted", "converted"):
        controller._note_decisions([verdict(state)], trigger=state)
    assert [(k, d.get("replica") or d.get("to")) for k, d in emitted] == [
        ("replica_lost", str(node(B))),
        ("replica_back", str(node(B))),
        ("failover", str(node(B))),
        ("replica_back", str(node(A))),
    ]
    assert emitted[2][1] == {"group": GROUP, "from": str(node(A)), "to": str(node(B)), "epoch": 1}
    assert controller.counters.failovers_seen == 1
    assert controller.counters.undecided == set()


def test_undecided_is_emitted_once_and_compared_with_the_last_verdict(
    controller: Controller, emitted: Emitted
) -> None:
    """Undecided passes emit once per reason; the next verdict is compared with the last decided."""
    controller._note_decisions([verdict("steady")], "resync")
    for _ in range(3):
        controller._note_decisions([verdict("steady", min_voters=4)], "resync")
    assert [k for k, _ in emitted] == ["undecided"]
    assert controller.counters.undecided == {GROUP}
    controller._note_decisions([verdict("switched")], "+switch-master")
    assert [k for k, _ in emitted] == ["undecided", "failover"]
    assert controller.counters.failovers_seen == 1
    assert controller.counters.undecided == set()


def hint(channel: str, text: str, received: float = 100.0) -> Hint:
    return Hint("127.0.0.1:1", "event", received, parse_event(channel, text))


def test_hints_that_warrant_a_pass(controller: Controller) -> None:
    """Relevant events and connection changes start a pass; noise and other groups do not."""
    assert controller._note_hint(hint("+switch-master", f"{GROUP} 127.0.0.2 1 127.0.0.3 1"))
    assert controller._note_hint(hint("+new-epoch", "3"))
    assert not controller._note_hint(hint("+vote-for-leader", "1ce51fd96d 1"))
    assert not controller._note_hint(hint("+switch-master", "other 127.0.0.2 1 127.0.0.3 1"))
    assert controller._note_hint(Hint("127.0.0.1:1", "connected", 1.0))
    assert controller._note_hint(Hint("127.0.0.1:1", "disconnected", 1.0, detail="EOF"))
    assert not controller._note_hint(Hint("127.0.0.1:1", "bad_event", 1.0, detail="x"))


def test_haproxy_identity_changes_are_noticed(controller: Controller) -> None:
    """First sight, a new Pid or Start_time, or a return after being down count as new."""
    target = "/run/haproxy/admin.sock"
    info = HAProxyInfo(pid=10, start_time_s=1000)
    assert controller._haproxy_seen(target, info)
    assert not controller._haproxy_seen(target, info)
    assert controller._haproxy_seen(target, HAProxyInfo(pid=11, start_time_s=1000))
    assert controller._haproxy_seen(target, HAProxyInfo(pid=11, start_time_s=1001))
    controller._haproxy_down(target, "cannot talk to the socket")
    assert controller.counters.haproxy_up[target] is False
    assert controller._haproxy_seen(target, HAProxyInfo(pid=11, start_time_s=1001))
    assert controller.counters.haproxy_up[target] is True
