"""The write lease: its TTL, how long a majority of Sentinels vouch, and what the loop does
when it expires (fences every write backend, pushes the lease to HAProxy's map)."""

from __future__ import annotations

import dataclasses
import time

from captured import GROUP, views
from fakes import FakeHAProxy, FakeSentinels

from controller import lease
from controller.loop import Controller
from controller.model import Address
from controller.settings import Settings

W = f"{GROUP}_master"


def test_ttl_is_half_the_shortest_down_after_at_least_one_second() -> None:
    """Auto TTL: half the shortest down-after-milliseconds, never below 1 s; a configured TTL
    wins."""
    assert lease.ttl_for([5000, 30000], 0) == 2.5
    assert lease.ttl_for([1000], 0) == 1.0
    assert lease.ttl_for([], 0) == 2.0
    assert lease.ttl_for([5000], 0.7) == 0.7


def test_lease_lasts_ttl_after_the_majority_th_most_recent_pong() -> None:
    """With 3 Sentinels the lease ends TTL after the 2nd most recent pong: one Sentinel alone
    cannot keep it; fewer than 2 pongs give no lease."""
    assert lease.valid_until([10.0, 9.0, 3.0], 3, 1.0) == 10.0
    assert lease.valid_until([10.0, 3.0], 3, 1.0) == 4.0
    assert lease.valid_until([10.0], 3, 1.0) is None
    assert lease.valid_until([], 0, 1.0) is None


def test_min_sentinels_sets_the_pongs_the_lease_needs_as_it_sets_the_votes() -> None:
    """`min_sentinels` (the votes a verdict needs) is also what keeps the lease: with 1, one
    Sentinel heard of 4 known keeps it (an operator who trusts one vote is not fenced by the
    lease); with 3 of 3, one missing pong ends it."""
    assert lease.valid_until([10.0], 4, 1.0, min_sentinels=1) == 11.0
    assert lease.valid_until([10.0], 4, 1.0) is None
    assert lease.valid_until([10.0, 9.0], 3, 1.0, min_sentinels=3) is None


@dataclasses.dataclass
class Pinging:
    """A Watcher whose pongs the test sets."""

    addr: Address
    connected: bool = True
    last_error: str = ""
    last_pong: float = 0.0

    def start(self) -> None:
        pass

    def stop(self, timeout_s: float = 2.0) -> None:
        pass


def controller(h: FakeHAProxy, watchers: list[Pinging], ttl: float = 1.0) -> Controller:
    settings = Settings(sentinels=("a:1", "b:1", "c:1"), masters=(GROUP,),
                        write_lease_ttl_s=ttl)
    return Controller(settings, FakeSentinels("steady"), [h], watchers)


def test_renewal_writes_the_lease_into_the_map_as_epoch_ms() -> None:
    """While a majority ponged, the lease map's `lease` entry is the wall-clock end of the
    lease, in ms."""
    h = FakeHAProxy()
    h.map_files = ["/etc/haproxy/lease.map"]
    now = time.monotonic()
    ws = [Pinging(Address(f"10.0.0.{i}", 1), last_pong=now) for i in range(3)]
    c = controller(h, ws)
    c.reconcile("start")
    assert not c.renew_lease()
    value = int(h.map_entries[("/etc/haproxy/lease.map", "lease")])
    assert abs(value - (time.time() + 1.0) * 1000) < 200


def test_no_lease_is_pushed_before_a_full_pass_synced_every_group() -> None:
    """A controller that just started gives HAProxy no lease until its first full pass has
    synced every group: the states HAProxy holds may be from before it (a stale master), and
    the lease would let writes reach them."""
    h = FakeHAProxy()
    h.map_files = ["lease.map"]
    ws = [Pinging(Address(f"10.0.0.{i}", 1), last_pong=time.monotonic()) for i in range(3)]
    c = controller(h, ws)
    c.renew_lease()
    assert h.map_entries == {}
    c.reconcile("start")
    c.renew_lease()
    assert ("lease.map", "lease") in h.map_entries


def test_expired_lease_fences_every_write_backend_until_renewed() -> None:
    """No pong from a majority for a TTL: the lease expires and every write server goes to
    maint with its sessions shut at once, from the last verdicts (the Sentinels are what is
    missing: not asked); the pass that follows keeps it so; pongs again: writes are routed
    again."""
    h = FakeHAProxy()
    h.map_files = ["lease.map"]
    ws = [Pinging(Address(f"10.0.0.{i}", 1)) for i in range(3)]
    c = controller(h, ws, ttl=1.0)
    c.reconcile("start")
    assert h.state().backends[W]["redis1a"].admin.value == "ready"
    c.lease_until = time.monotonic() - 0.01  # the TTL passed without pongs
    assert isinstance(c.reader, FakeSentinels)
    reads = len(c.reader.reads)
    assert c.renew_lease(), "expiry is a change: the caller runs a pass"
    c.workers[0].drain()  # the fence is handed over at once, without asking the Sentinels
    assert len(c.reader.reads) == reads
    assert {s.admin.value for s in h.state().backends[W].values()} == {"maint"}
    assert f"shutdown sessions server {W}/redis1a" in h.applied
    c.reconcile("write_lease")
    assert {s.admin.value for s in h.state().backends[W].values()} == {"maint"}
    for w in ws:
        w.last_pong = time.monotonic()
    assert c.renew_lease(), "renewal is a change too"
    c.reconcile("write_lease")
    assert h.state().backends[W]["redis1a"].admin.value == "ready"


def test_lease_off_writes_a_far_future_lease_and_never_fences() -> None:
    """With the lease off, an HAProxy configured with the map still takes writes (the entry
    is years ahead) and the loop never fences for it."""
    h = FakeHAProxy()
    h.map_files = ["lease.map"]
    settings = Settings(sentinels=("a:1",), masters=(GROUP,), write_lease=False)
    c = Controller(settings, FakeSentinels("steady"), [h], [])
    c.lease_until = None
    c.reconcile("start")
    c.renew_lease()
    assert int(h.map_entries[("lease.map", "lease")]) > (time.time() + 365 * 86400) * 1000
    assert not c.lease_expired()


def test_missing_lease_map_is_reported_not_fatal() -> None:
    """An HAProxy without the lease map gets no lease command and the pass still works."""
    h = FakeHAProxy()
    c = controller(h, [Pinging(Address("10.0.0.1", 1), last_pong=time.monotonic())])
    c.renew_lease()
    assert h.map_entries == {}
    assert views("steady")  # the captured data the fakes use is there
