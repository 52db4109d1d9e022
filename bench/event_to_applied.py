"""The controller's own cost: hint/event received -> HAProxy command applied, p50/p99.

Runs the real `Controller` loop in this process against a real local stack (one group: 2
redis-server, 3 sentinels, haproxy; lab/localstack.py):

1. injected hints: HAProxy is put out of line (`set server <master> state maint` over the admin
   socket), then a hint is put on the loop's queue, as an EventWatcher does: an event naming
   the group (a targeted pass: read the group from 3 Sentinels, read its backends, plan, apply)
   or a Sentinel (re)connect (a full pass); the latency is the daemon's own `latency_ms` (hint
   received -> commands applied);
2. real failovers: `SENTINEL FAILOVER` repeatedly, with the real EventWatchers subscribed to every
   Sentinel; latency = the loop's `latency_ms` of the pass that set the new master ready
   (event received -> applied);
3. where the time goes: each step of a pass timed on its own (Sentinel read, HAProxy read, apply).
Goal: event -> applied p99 <= 2 ms. Prints tables; `--json` for machine output.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from controller.haproxy import HAProxyClient
from controller.loop import Controller
from controller.model import Command
from controller.plan import plan, targets
from controller.sentinel import Auth, EventWatcher, Hint, HintQueue, SentinelReader
from controller.sentinel_parse import parse_event
from controller.settings import Settings
from lab.localstack import Layout, LocalStack
from lab.wait import wait_until

GROUP = "redis1"
POLL_S = 0.002  # how often the waits below look (only the loop's own latency_ms is measured)


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


def row(name: str, values: Sequence[float]) -> dict[str, Any]:
    return {
        "what": name, "n": len(values),
        "p50_ms": round(statistics.median(values), 3) if values else None,
        "p90_ms": round(pct(values, 90), 3) if values else None,
        "p99_ms": round(pct(values, 99), 3) if values else None,
        "max_ms": round(max(values), 3) if values else None,
    }


class Capture:
    """A structlog processor keeping the loop's events (then dropped: nothing is printed)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, _: Any, __: str, event: MutableMapping[str, Any]) -> Any:
        with self.lock:
            self.events.append(dict(event))
        raise structlog.DropEvent

    def take(self) -> list[dict[str, Any]]:
        with self.lock:
            out, self.events = self.events, []
        return out


def master_server(stack: LocalStack) -> str:
    addr = stack.master_addr(0, GROUP)
    node = stack.node_at(addr) if addr else None
    if node is None:
        raise RuntimeError("no master known")
    return node.name


def bench_hints(stack: LocalStack, ctl: Controller, cap: Capture, n: int,
                full: bool = False) -> list[float]:
    """`n` times: the master's write server put in maint by hand, then a hint: an event
    naming the group (a targeted pass), or with `full` a Sentinel (re)connect (a full pass)."""
    out: list[float] = []
    for _ in range(n):
        name = master_server(stack)
        stack.haproxy_command(f"set server {GROUP}_master/{name} state maint")
        cap.take()
        if full:
            ctl.hints.put(Hint("bench", "connected", time.monotonic()))
        else:
            addr = stack.master_addr(0, GROUP)
            event = parse_event("+sdown", f"slave {addr} {addr.host if addr else ''} "
                                f"{addr.port if addr else 0} @ {GROUP} 127.0.0.1 1")
            ctl.hints.put(Hint("bench", "event", time.monotonic(), event))

        def applied() -> list[float]:
            return [float(e["latency_ms"]) for e in cap.events
                    if e.get("event") == "server_state_changed"]

        lat = wait_until(applied, 5.0, "the loop to apply the fix", POLL_S)
        out.append(min(lat))
    return out


def bench_failovers(stack: LocalStack, cap: Capture, n: int) -> list[float]:
    return [one_failover(stack, cap) for _ in range(n)]


def one_failover(stack: LocalStack, cap: Capture) -> float:
    """SENTINEL FAILOVER; the loop's latency for setting the new master ready; then wait
    until the old master is a linked replica (so that the next failover can start)."""
    old = master_server(stack)

    def failover_started() -> bool:
        try:
            return stack.sentinel_command(0, "SENTINEL", "FAILOVER", GROUP) == "OK"
        except Exception:  # INPROG / NOGOODSLAVE while the last one settles: retry
            return False

    wait_until(failover_started, 60.0, "a sentinel to accept SENTINEL FAILOVER", POLL_S)
    cap.take()
    got: list[float] = []

    def new_master_ready() -> bool:
        for e in cap.take():
            if (e.get("event") == "server_state_changed" and e.get("to") == "ready"
                    and e.get("backend") == f"{GROUP}_master" and e.get("server") != old):
                got.append(float(e["latency_ms"]))
        return bool(got)

    wait_until(new_master_ready, 30.0, "the controller to set the new master ready", POLL_S)
    new = next(x for x in stack.nodes if x != old)

    def settled() -> bool:
        try:
            info = str(stack.redis_command(old, "INFO", "replication"))
            return ("role:slave" in info and "master_link_status:up" in info
                    and stack.role(new) == "master")
        except Exception:
            return False

    wait_until(settled, 30.0, f"{old} to be a linked replica of {new}", POLL_S)
    return got[0]


def bench_steps(stack: LocalStack, ctl: Controller, client: HAProxyClient,
                n: int) -> dict[str, list[float]]:
    steps: dict[str, list[float]] = {"sentinel read (3 in parallel) + decide": [],
                                     "haproxy state read": [], "plan": [],
                                     "apply (1 command)": []}
    for _ in range(n):
        t = time.perf_counter()
        _, decisions = ctl.observe()
        steps["sentinel read (3 in parallel) + decide"].append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        state = client.state()
        steps["haproxy state read"].append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        wanted, _ = targets(decisions, "{master}_master", "{master}_replicas")
        plan(wanted, state)
        steps["plan"].append((time.perf_counter() - t) * 1000)
        name = master_server(stack)
        cmd = Command(f"set server {GROUP}_master/{name} state ready", f"{GROUP}_master", name,
                      "bench")
        t = time.perf_counter()
        client.run([cmd])
        steps["apply (1 command)"].append((time.perf_counter() - t) * 1000)
    return steps


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hints", type=int, default=300)
    p.add_argument("--failovers", type=int, default=10)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    sys.setswitchinterval(0.0005)  # as the daemon does (controller/cli.py, cmd_run)
    cap = Capture()
    structlog.configure(
        processors=[structlog.processors.add_log_level, cap],
        logger_factory=structlog.PrintLoggerFactory(file=open(os.devnull, "w")),  # noqa: SIM115
        cache_logger_on_first_use=False,
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench-e2a-"))
    layout = Layout.for_tests(groups=(GROUP,))
    results: list[dict[str, Any]] = []
    with LocalStack(workdir, layout) as stack:
        sentinels = tuple(str(a) for a in stack.sentinel_addrs)
        settings = Settings(sentinels=sentinels, haproxy_sockets=(str(stack.haproxy_socket),),
                            resync_interval_s=60.0)
        reader = SentinelReader(stack.sentinel_addrs, Auth(), (), settings.sentinel_timeout_s)
        client = HAProxyClient(str(stack.haproxy_socket), settings.haproxy_timeout_s)
        hints = HintQueue()
        watchers = [EventWatcher(a, Auth(), hints.put) for a in reader.sentinels]
        ctl = Controller(settings, reader, [client], watchers, hints)
        stop = threading.Event()
        loop = threading.Thread(target=ctl.run, args=(stop,), daemon=True)
        loop.start()
        try:
            wait_until(lambda: all(w.connected for w in watchers), 10, "event watchers",
                       POLL_S)
            wait_until(lambda: ctl.counters.passes > 0
                       and not ctl.counters.drift.get(client.target, 1),
                       10, "the first pass", POLL_S)
            hint_lat = bench_hints(stack, ctl, cap, args.hints)
            results.append(row("injected event -> applied (targeted pass)", hint_lat))
            full_lat = bench_hints(stack, ctl, cap, args.hints, full=True)
            results.append(row("injected (re)connect -> applied (full pass)", full_lat))
            fo_lat = bench_failovers(stack, cap, args.failovers) if args.failovers else []
            if fo_lat:
                results.append(row("real failover: event -> new master ready", fo_lat))
        finally:
            stop.set()
            loop.join(5)
            reader.close()
        # the loop is stopped: time each step alone
        reader2 = SentinelReader(stack.sentinel_addrs, Auth(), (), settings.sentinel_timeout_s)
        ctl2 = Controller(settings, reader2, [client])
        for name, vals in bench_steps(stack, ctl2, client, args.steps).items():
            results.append(row(f"  step: {name}", vals))
        reader2.close()
    errors = [e for e in cap.take() if e.get("event") == "unexpected_error"]
    if args.json:
        print(json.dumps({"results": results, "unexpected_errors": len(errors)}, indent=2))
    else:
        print(f"{'':<46}{'n':>5}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}  (ms)")
        for r in results:
            print(f"{r['what']:<46}{r['n']:>5}{r['p50_ms']:>9.3f}{r['p90_ms']:>9.3f}"
                  f"{r['p99_ms']:>9.3f}{r['max_ms']:>9.3f}")
        print(f"goal: event -> applied p99 <= 2 ms; unexpected_error lines: {len(errors)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
