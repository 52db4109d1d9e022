"""Topology from Sentinel on real processes (issue 10): HAProxy runs the generated, slot-based
config (haproxy/haproxy-slots.cfg), no server list is kept by hand, and the controller fills the
slots from what Sentinel knows.

- a replica started at runtime gets reads within 1 s of Sentinel's `+slave`;
- a replica removed with `SENTINEL RESET` leaves the read backend while the healthy one keeps
  serving through the reset's rediscovery gap;
- a group of hostname-announced nodes (`resolve-hostnames yes`, `announce-hostnames yes`; names
  from a hosts file of the stack, bind-mounted privately for each process) is routed right
  before and after a failover, and when the new master restarts on another loopback address
  the write port follows it with 0 acknowledged writes lost, no config edit, no reload;
- the whole stack on IPv6 (`::1`): Sentinel, Redis, HAProxy and the controller.

Every wait is bounded (lab.wait.wait_until); timings are printed for the record.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import requests
from itest_support import ControllerFactory, StackFactory, run_cli, wait_sentinels_agree
from prometheus_client.parser import text_string_to_metric_families
from test_configs import haproxy_check

from controller.haproxy import HAProxyError
from controller.haproxy_config import LEASE_MAP_TEXT, render
from controller.haproxy_config import Layout as ConfigLayout
from controller.model import Address
from lab.daemon import lease_given
from lab.localstack import HAPROXY_SLOTS_CONFIG, LocalStack, free_port
from lab.probes import EventRecorder, Mark, Writer, read_back
from lab.resp import RespConn, RespError
from lab.wait import wait_until

pytestmark = pytest.mark.integration

G = "redis1"
W, R = f"{G}_master", f"{G}_replicas"
NOT_YET = (OSError, RespError, HAProxyError, ValueError, KeyError)


def ready(stack: LocalStack, backend: str, backup: bool = False) -> set[Address]:
    """Addresses of the ready slots of `backend` (its backup slots with `backup`)."""
    servers = stack.haproxy_state().backends[backend].values()
    return {Address(s.addr, s.port) for s in servers
            if s.admin.value == "ready" and s.backup == backup}


def wait_routes(stack: LocalStack, write: set[Address], read: set[Address],
                timeout_s: float = 30, what: str = "") -> None:
    def routes() -> bool:  # and writes taken: the lease comes once every group is synced
        return (ready(stack, W) == write and ready(stack, R) == read
                and lease_given(str(stack.haproxy_socket)))

    wait_until(routes, timeout_s, what or f"write slots {write}, read slots {read}",
               context=lambda: f"haproxy: {stack.haproxy_state().backends}", not_yet=NOT_YET)


def behind(stack: LocalStack, front: Address) -> Address:
    """The node a new connection to `front` reaches (its bind address and port)."""
    with RespConn(front, 2.0) as c:
        bind = c.command("CONFIG", "GET", "bind")
        port = c.command("CONFIG", "GET", "port")
    assert isinstance(bind, list) and isinstance(port, list), (bind, port)
    return Address(str(bind[1]).split()[0], int(str(port[1])))


def slots_stack(make_stack: StackFactory, **overrides: object) -> LocalStack:
    return make_stack(groups=(G,), haproxy_config=HAPROXY_SLOTS_CONFIG, **overrides)


@contextmanager
def writers(stack: LocalStack) -> Iterator[list[Writer]]:
    """A held-connection writer and a new-connection-per-write writer on the write port."""
    stop = threading.Event()
    ws = [Writer(stack.write_frontend(G), "topo", i, stop, interval_s=0.005,
                 reconnect_each=bool(i)) for i in range(2)]
    for w in ws:
        w.start()
    try:
        wait_until(lambda: all(w.acked() for w in ws), 10, "first acked writes")
        yield ws
    finally:
        stop.set()
        for w in ws:
            w.join(5)


@contextmanager
def write_slots(stack: LocalStack) -> Iterator[list[set[Address]]]:
    """Samples, every 5 ms, of the ready write slots' addresses (one set per sample)."""
    seen: list[set[Address]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with suppress(HAProxyError):
                seen.append(ready(stack, W))
            stop.wait(0.005)

    t = threading.Thread(target=sample, name="write-slots", daemon=True)
    t.start()
    try:
        yield seen
    finally:
        stop.set()
        t.join(5)


def lost(stack: LocalStack, node: str, ws: list[Writer]) -> list[str]:
    """Acknowledged keys missing on `node` (read directly, not through HAProxy)."""
    keys = [s.key for w in ws for s in w.acked()]
    values = read_back(stack.nodes[node].addr, keys)
    return [k for k in keys if values.get(k) is None]


def test_a_replica_started_at_runtime_gets_reads_within_1s_of_plus_slave(
    make_stack: StackFactory, make_controller: ControllerFactory
) -> None:
    """`redis1c` starts at runtime as a replica of the master: no HAProxy config names it. It
    gets a read slot and is ready within 1 s of the first Sentinel's `+slave` for it, and new
    read connections reach it."""
    stack = slots_stack(make_stack)
    a, b = stack.nodes["redis1a"].addr, stack.nodes["redis1b"].addr
    make_controller(stack, wait=False)
    wait_routes(stack, {a}, {b})
    events = EventRecorder(stack.sentinel_addrs)
    assert events.start(), "event recorder could not subscribe"
    try:
        c = stack.add_node("redis1c", G, "127.0.0.12", replicaof="redis1a").addr

        def plus_slave() -> Mark | None:
            return next((m for m in events.snapshot()
                         if m.kind == "+slave" and f"{c.host} {c.port} @" in m.text), None)

        first = wait_until(plus_slave, 40, f"a Sentinel's +slave for {c}")
        seen = wait_until(lambda: time.time() if c in ready(stack, R) else None, 10,
                          f"{c} ready in {R}", interval_s=0.005, not_yet=NOT_YET)
        delay = seen - first.t
        print(f"\n+slave ({first.source}) -> read slot ready: {delay * 1000:.0f} ms")
        assert delay <= 1.0, f"{delay:.3f} s from +slave to a read slot"
        reached = {behind(stack, stack.read_frontend(G)) for _ in range(20)}
        assert c in reached and b in reached
        assert ready(stack, W) == {a}
    finally:
        events.stop()


def test_sentinel_reset_removes_the_gone_replica_and_keeps_the_healthy_one(
    make_stack: StackFactory, make_controller: ControllerFactory
) -> None:
    """Two replicas serve; one is stopped and every Sentinel is `SENTINEL RESET`: the stopped
    one leaves the read backend at once, the healthy one stays ready in every sample through
    the rediscovery gap and after."""
    stack = slots_stack(make_stack, replicas=2)
    a, b, c = (stack.nodes[n].addr for n in ("redis1a", "redis1b", "redis1c"))
    make_controller(stack, wait=False)
    wait_routes(stack, {a}, {b, c})
    samples: list[tuple[float, set[Address]]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with suppress(HAProxyError):
                samples.append((time.monotonic(), ready(stack, R)))
            stop.wait(0.01)

    poller = threading.Thread(target=sample, daemon=True)
    poller.start()
    try:
        stack.kill_node("redis1c")
        t0 = time.monotonic()
        for i in range(stack.layout.sentinels):
            stack.sentinel_command(i, "SENTINEL", "RESET", G)
        gone = wait_until(lambda: time.monotonic() if c not in ready(stack, R) else None, 10,
                          f"{c} out of {R}", interval_s=0.01, not_yet=NOT_YET)
        print(f"\nSENTINEL RESET -> removed replica out of the read backend: "
              f"{(gone - t0) * 1000:.0f} ms")

        def rediscovered() -> bool:
            return all(int(stack.sentinel_master(i, G).get("num-slaves", "0")) >= 1
                       for i in range(stack.layout.sentinels))

        wait_until(rediscovered, 40, "every Sentinel to list a replica again", not_yet=NOT_YET)
        t1 = time.monotonic()
        print(f"rediscovery gap: {(t1 - t0) * 1000:.0f} ms")
        n = len(samples)
        wait_until(lambda: len(samples) > n + 20, 10, "samples after the rediscovery")
    finally:
        stop.set()
        poller.join(5)
    during = [s for t, s in samples if t >= t0]
    assert during and all(b in s for s in during), "the healthy replica left during the gap"
    assert ready(stack, R) == {b}


@pytest.mark.parametrize("fault", ["sigkill"])
def test_hostname_announced_group_is_routed_before_and_after_a_failover(
    make_stack: StackFactory, make_controller: ControllerFactory, fault: str
) -> None:
    """Sentinel and the replicas name every node by hostname: the controller resolves the
    names (its own hosts file setting) and routes writes to the master and reads to the
    replica; after the master's SIGKILL and failover, writes reach the new master, and the old
    one, back as a replica, serves reads."""
    stack = slots_stack(make_stack, hostnames=True)
    a, b = stack.nodes["redis1a"].addr, stack.nodes["redis1b"].addr
    name = stack.sentinel_command(0, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", G)
    assert isinstance(name, list) and name[0] == "redis1a.redis.test"
    make_controller(stack, "--resolver-hosts-file", str(stack.hosts_file), wait=False)
    wait_routes(stack, {a}, {b})
    assert behind(stack, stack.write_frontend(G)) == a
    assert behind(stack, stack.read_frontend(G)) == b
    stack.kill_node("redis1a")
    wait_sentinels_agree(stack, G, "redis1b", timeout_s=40)
    wait_until(lambda: behind(stack, stack.write_frontend(G)) == b, 20,
               "writes reach redis1b", not_yet=NOT_YET)
    stack.start_node("redis1a")
    wait_routes(stack, {b}, {a}, timeout_s=60, what="old master back as a serving replica")
    assert behind(stack, stack.read_frontend(G)) == a


def test_new_master_restarting_on_another_address_is_followed_without_losing_writes(
    make_stack: StackFactory, make_controller: ControllerFactory
) -> None:
    """Hostname-announced group: `SENTINEL FAILOVER` to redis1b, then redis1b restarts with its
    data on another loopback address under the same name (a pod with a new IP). Sentinel keeps
    naming it; the write port follows it; every acknowledged write is on it; HAProxy was not
    reloaded and its config file not touched."""
    stack = slots_stack(make_stack, hostnames=True)
    a, b = stack.nodes["redis1a"].addr, stack.nodes["redis1b"].addr
    make_controller(stack, "--resolver-hosts-file", str(stack.hosts_file), wait=False)
    wait_routes(stack, {a}, {b})
    pid = stack.haproxy_pid
    config = hashlib.sha256(stack.haproxy_config_path.read_bytes()).hexdigest()
    with writers(stack) as ws, write_slots(stack) as seen:
        stack.sentinel_command(0, "SENTINEL", "FAILOVER", G)
        wait_sentinels_agree(stack, G, "redis1b", timeout_s=40)
        wait_until(lambda: behind(stack, stack.write_frontend(G)) == b, 20,
                   "writes reach redis1b", not_yet=NOT_YET)
        t_move = time.time()
        moved = stack.move_node("redis1b", "127.0.0.13").addr
        t_up = time.time()

        def first_ack_on_new() -> float | None:
            return next((s.t for w in ws for s in w.acked()
                         if s.t > t_up and s.node == str(moved)), None)

        first = wait_until(first_ack_on_new, 30, f"a write acked by redis1b at {moved}")
        print(f"\nredis1b restarted at {moved} ({(t_up - t_move) * 1000:.0f} ms down): first "
              f"write acked there {(first - t_up) * 1000:.0f} ms after it was up")
        n = sum(len(w.acked()) for w in ws)
        wait_until(lambda: sum(len(w.acked()) for w in ws) > n + 100, 20, "more acked writes")
    assert ready(stack, W) == {moved}
    assert seen and max(len(s) for s in seen) == 1, "two write slots ready at once"
    missing = lost(stack, "redis1b", ws)
    acked = sum(len(w.acked()) for w in ws)
    print(f"acknowledged writes: {acked}, lost: {len(missing)}")
    assert missing == []
    assert stack.haproxy_pid == pid
    assert hashlib.sha256(stack.haproxy_config_path.read_bytes()).hexdigest() == config


def test_ipv6_stack_routes_and_fails_over(
    make_stack: StackFactory, make_controller: ControllerFactory
) -> None:
    """Redis, Sentinel, HAProxy (frontends and admin socket) and the controller all on `::1`:
    writes reach the master and reads the replica through `[::1]` ports, and after the
    master's SIGKILL writes reach the promoted replica."""
    stack = slots_stack(make_stack, ipv6=True)
    a, b = stack.nodes["redis1a"].addr, stack.nodes["redis1b"].addr
    assert a.host == b.host == "::1" and stack.haproxy_admin.startswith("tcp:[::1]:")
    ctl = make_controller(stack, wait=False)
    assert all(s.startswith("[::1]:") for s in ctl.sentinels)
    wait_routes(stack, {a}, {b})
    assert behind(stack, stack.write_frontend(G)) == a
    assert behind(stack, stack.read_frontend(G)) == b
    with RespConn(stack.write_frontend(G), 2.0) as c:
        assert c.command("SET", "v6", "ok") == "OK"
    stack.kill_node("redis1a")
    wait_until(lambda: behind(stack, stack.write_frontend(G)) == b, 40,
               "writes reach redis1b over IPv6", not_yet=NOT_YET)
    with RespConn(stack.write_frontend(G), 2.0) as c:
        assert c.command("GET", "v6") == "ok"


def test_more_nodes_than_slots_is_one_log_line_and_a_metric_naming_the_group(
    make_stack: StackFactory, make_controller: ControllerFactory, tmp_path: Path
) -> None:
    """Three nodes, two slots per backend (a config generated with slots_per_backend 2): the
    master and the two serving replicas are routed, one `slots_exhausted` line per backend
    names the group and the node left out, and the metric counts it per group and backend."""
    cfg = tmp_path / "two-slots.cfg"
    cfg.write_text(render([G], ConfigLayout(slots=2)))
    (cfg.parent / "lease.map").write_text(LEASE_MAP_TEXT)  # the config names it
    stack = make_stack(groups=(G,), replicas=2, haproxy_config=cfg)
    a, b, c = (stack.nodes[n].addr for n in ("redis1a", "redis1b", "redis1c"))
    address = f"127.0.0.1:{free_port(['127.0.0.1'])}"
    ctl = make_controller(stack, "--metrics-address", address, "--log-level", "debug",
                          wait=False)  # debug: quiet passes are logged too
    wait_routes(stack, {a}, {b, c})
    assert ready(stack, R, backup=True) == {a}
    line = ctl.wait_event("slots_exhausted", backend=W)
    assert G in line["detail"] and str(c) in line["detail"]
    passes = len(ctl.events("pass"))
    wait_until(lambda: len(ctl.events("pass")) >= passes + 3, 20, "three more passes")
    assert len(ctl.events("slots_exhausted", backend=W)) == 1
    assert len(ctl.events("slots_exhausted", backend=R)) == 1
    r = requests.get(f"http://{address}/metrics", timeout=5)
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    got = {(s.labels["group"], s.labels["backend"]): s.value
           for s in families["sentinel_haproxy_nodes_without_slot"].samples}
    assert got == {(G, W): 1.0, (G, R): 1.0}


def test_slot_assignment_survives_a_controller_restart(
    make_stack: StackFactory, make_controller: ControllerFactory
) -> None:
    """A restarted controller reads the assignment back from HAProxy (which slot has which
    address): it re-addresses no slot and changes nothing."""
    stack = slots_stack(make_stack)
    a, b = stack.nodes["redis1a"].addr, stack.nodes["redis1b"].addr
    ctl = make_controller(stack, wait=False)
    wait_routes(stack, {a}, {b})

    def slots() -> dict[tuple[str, str], Address]:
        return {(be, s.name): Address(s.addr, s.port)
                for be, servers in stack.haproxy_state().backends.items()
                for s in servers.values()}

    before = slots()
    ctl.stop()
    mark = ctl.mark()
    ctl.start()
    ctl.wait_event("master_known", since=mark)
    ctl.wait_event("pass", since=mark)
    assert slots() == before
    assert ctl.events("server_state_changed", since=mark) == []


def test_config_command_reads_the_groups_from_sentinel_and_haproxy_accepts_it(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    """`sentinel-haproxy config --sentinel ...` against real Sentinels prints a config with
    every group they monitor, in name order from port 5000, that `haproxy -c` accepts."""
    stack = make_stack(groups=("redis1", "redis2", "redis3"))
    res = run_cli(stack, "config", "--admin-socket", str(tmp_path / "admin.sock"))
    assert res.returncode == 0, res.stderr
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(res.stdout)
    for i, g in enumerate(("redis1", "redis2", "redis3")):
        assert f"frontend {g}_write\n    bind :{5000 + 2 * i}\n" in res.stdout
        assert f"backend {g}_replicas\n" in res.stdout
    check = haproxy_check(cfg)
    assert check.returncode == 0, check.stdout + check.stderr
