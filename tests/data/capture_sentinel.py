"""Regenerate tests/data/sentinel_*.json and haproxy_localstack_*.txt from real processes.

Runs a one-group LocalStack (redis1a master, redis1b replica, 3 sentinels, haproxy) and walks it
through a failover, saving what every Sentinel answers at each step, with redis-py exactly as the
controller asks (`execute_command`, pipelined per Sentinel, decode_responses=True), once with
protocol=2 (flat field lists) and once with protocol=3 (maps):

    steady               every node up, epoch 0 (also: replies for an unknown master name)
    replica_dead         redis1b SIGKILLed, every sentinel lists it s_down
    master_down          redis1a SIGKILLed, first snapshot where a sentinel flags it o_down
    selected             first snapshot in the leader's window between its
                         +failover-state-send-slaveof-noone and its +promoted-slave: its
                         SENTINEL REPLICAS flags the chosen replica `promoted` while every
                         GET-MASTER-ADDR-BY-NAME still names the old master; `events` holds every
                         Sentinel's published events of the failover, stamped on receipt, to
                         show the snapshot lies inside that window
    promoted             first snapshot where the leader's GET-MASTER-ADDR-BY-NAME names the
                         promoted replica while its SENTINEL MASTERS entry keeps the old ip with
                         failover_in_progress and the new config-epoch (others still lag)
    switched             every sentinel switched (+switch-master seen everywhere, failover ended),
                         the dead old master listed as an s_down replica
    old_master_returned  redis1a restarted with its own config (a master): listed as a replica with
                         role-reported master, master-link-status err, no s_down
    converted            redis1a converted and linked: steady again at epoch 1, redis1b master
    tilt                 sentinel2 SIGSTOPped 3 s then resumed: sentinel_tilt 1

HAProxy (the stack's, the shipped layout): state batch (`show info; show servers state; show stat
-1 4 -1`) at start (every server config-disabled), after the steady state was applied by hand and
after the failover was applied by hand.

Usage: .venv/bin/python tests/data/capture_sentinel.py [--only STATE,...]
(about a minute; stops all it starts). `--only` walks the same path but writes only the named
files (states above; `haproxy_initial`, `haproxy_steady`, `haproxy_switched` for the HAProxy
ones): a file captured alone comes from another stack, with other ports, than the rest.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from lab import resp
from lab.localstack import Layout, LocalStack
from lab.wait import wait_until

DATA = Path(__file__).resolve().parent
GROUP = "redis1"
POLL_S = 0.002
STATE_BATCH = "show info; show servers state; show stat -1 4 -1"

Snapshot = dict[str, dict[str, Any]]  # sentinel "host:port" -> command -> raw reply


def fields(raw: Any) -> dict[str, str]:
    """A RESP2 flat list or a RESP3 map as a dict (only for the conditions below)."""
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    return {str(k): str(v) for k, v in zip(raw[::2], raw[1::2], strict=True)}


class EventTap:
    """Every Sentinel's published events (`PSUBSCRIBE *`), stamped on receipt in ms since `t0`
    (the capture's clock), as [t_ms, channel, message]."""

    def __init__(self, stack: LocalStack) -> None:
        self.t0 = time.monotonic()
        self.stop_event = threading.Event()
        self.events: dict[str, list[list[Any]]] = {}
        self.threads: list[threading.Thread] = []
        self.pubsubs: list[Any] = []
        self.redis_clients: list[redis.Redis] = []
        for a in stack.sentinel_addrs:
            # keep the client: a collected Redis closes its pool, the pubsub's connection too
            client = redis.Redis(host=a.host, port=a.port, decode_responses=True,
                                 socket_timeout=2)
            self.redis_clients.append(client)
            ps = client.pubsub()  # type: ignore[no-untyped-call]
            ps.psubscribe("*")
            self.pubsubs.append(ps)
            self.events[str(a)] = []
            self.threads.append(threading.Thread(
                target=self._run, args=(ps, self.events[str(a)]), daemon=True))
        for th in self.threads:
            th.start()

    def _run(self, ps: Any, out: list[list[Any]]) -> None:
        while not self.stop_event.is_set():
            msg = ps.get_message(timeout=0.05)
            if msg and msg.get("type") == "pmessage":
                out.append([round((time.monotonic() - self.t0) * 1000, 1), msg["channel"],
                            msg["data"]])

    def first(self, sentinel: str, channel: str) -> float | None:
        return next((e[0] for e in list(self.events[sentinel]) if e[1] == channel), None)

    def __enter__(self) -> EventTap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for th in self.threads:
            th.join(5)
        for ps in self.pubsubs:
            ps.close()
        for c in self.redis_clients:
            c.close()


class Capture:
    def __init__(self, stack: LocalStack, only: set[str] | None = None,
                 t0: float | None = None) -> None:
        self.stack = stack
        self.only = only
        self.names = [str(a) for a in stack.sentinel_addrs]
        self.clients: dict[int, dict[str, Any]] = {
            proto: {
                str(a): redis.Redis(
                    host=a.host, port=a.port, protocol=proto, decode_responses=True,
                    socket_timeout=2,
                )
                for a in stack.sentinel_addrs
            }
            for proto in (2, 3)
        }
        self.t0 = time.monotonic() if t0 is None else t0

    def snap(self, proto: int) -> Snapshot:
        """Every sentinel's answers, one pipeline per sentinel (the reader's round trip)."""
        out: Snapshot = {}
        for name, c in self.clients[proto].items():
            pipe = c.pipeline(transaction=False)
            pipe.execute_command("INFO", "sentinel")
            pipe.execute_command("SENTINEL", "MASTERS")
            pipe.execute_command("SENTINEL", "MYID")
            pipe.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", GROUP)
            pipe.execute_command("SENTINEL", "REPLICAS", GROUP)
            pipe.execute_command("SENTINEL", "SENTINELS", GROUP)
            info, masters, myid, addr, replicas, others = pipe.execute()
            out[name] = {
                "t_ms": round((time.monotonic() - self.t0) * 1000, 1),
                "INFO sentinel": info,
                "SENTINEL MASTERS": masters,
                "SENTINEL MYID": myid,
                f"SENTINEL GET-MASTER-ADDR-BY-NAME {GROUP}": addr,
                f"SENTINEL REPLICAS {GROUP}": replicas,
                f"SENTINEL SENTINELS {GROUP}": others,
            }
        return out

    def info_text(self) -> dict[str, str]:
        """`INFO sentinel` as raw text (redis-py parses INFO into a dict)."""
        return {
            str(a): str(resp.command(a, "INFO", "sentinel")) for a in self.stack.sentinel_addrs
        }

    def wait(self, what: str, cond: Callable[[Snapshot], bool], timeout_s: float) -> Snapshot:
        """Poll RESP2 snapshots (every POLL_S) until `cond` holds; return the snapshot where it
        first held. Any exception ends the wait (a snapshot that cannot be read is a failure)."""
        last: Snapshot = {}

        def held() -> Snapshot | None:
            nonlocal last
            last = self.snap(2)
            return last if cond(last) else None

        s = wait_until(held, timeout_s, what, POLL_S, context=lambda: json.dumps(last)[:2000],
                       not_yet=())
        print(f"  {what}: after {(time.monotonic() - self.t0):.3f} s", flush=True)
        return s

    def save(self, state: str, note: str, resp2: Snapshot, *, resp3: Snapshot | None = None,
             info_text: dict[str, str] | None = None, **extra: Any) -> None:
        """Write sentinel_<state>.json; `resp3`/`info_text` default to taking them now."""
        if self.only is not None and state not in self.only:
            return
        if resp3 is None:
            resp3 = self.snap(3)  # right after the RESP2 snapshot that met the condition
        nodes = {n.name: f"{n.host}:{n.port}" for n in self.stack.nodes.values()}
        doc = {
            "state": state,
            "note": note,
            "captured": {
                "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "redis_server": str(resp.command(self.stack.sentinel_addrs[0], "INFO", "server"))
                .split("redis_version:")[1]
                .split()[0],
                "redis_py": redis.__version__,
                "how": "tests/data/capture_sentinel.py: redis.Redis(host, port, protocol=2|3, "
                "decode_responses=True).pipeline(transaction=False) per sentinel with "
                "execute_command('INFO','sentinel'), ('SENTINEL','MASTERS'), ('SENTINEL','MYID'), "
                f"('SENTINEL','GET-MASTER-ADDR-BY-NAME','{GROUP}'), ('SENTINEL','REPLICAS',"
                f"'{GROUP}'), ('SENTINEL','SENTINELS','{GROUP}'); t_ms = ms since the stack was "
                "up; resp3 taken right after resp2",
            },
            "group": GROUP,
            "nodes": nodes,
            "sentinels": self.names,
            **extra,
            "resp2": resp2,
            "resp3": resp3,
            "info_text": self.info_text() if info_text is None else info_text,
        }
        path = DATA / f"sentinel_{state}.json"
        path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
        print(f"  wrote {path.name}", flush=True)

    def haproxy(self, name: str) -> None:
        """Save the state batch reply of the stack's HAProxy (notes: tests/data/README.md)."""
        if self.only is not None and f"haproxy_{name}" not in self.only:
            return
        reply = self.stack.haproxy_command(STATE_BATCH)
        path = DATA / f"haproxy_localstack_{name}.txt"
        path.write_text(reply)
        print(f"  wrote {path.name}", flush=True)

    def apply(self, commands: list[str]) -> None:
        reply = self.stack.haproxy_command("; ".join(commands))
        if reply.strip():
            raise RuntimeError(f"haproxy refused {commands}: {reply!r}")


def master_entry(s: dict[str, Any]) -> dict[str, str]:
    entries = [fields(e) for e in s["SENTINEL MASTERS"]]
    return next(e for e in entries if e["name"] == GROUP)


def replica(s: dict[str, Any], addr: str) -> dict[str, str] | None:
    for r in s[f"SENTINEL REPLICAS {GROUP}"]:
        f = fields(r)
        if f"{f['ip']}:{f['port']}" == addr:
            return f
    return None


def addr_of(s: dict[str, Any]) -> str:
    a = s[f"SENTINEL GET-MASTER-ADDR-BY-NAME {GROUP}"]
    return f"{a[0]}:{a[1]}"


def healthy(r: dict[str, str] | None, master: str) -> bool:
    return (
        r is not None
        and r["flags"] == "slave"
        and r.get("role-reported") == "slave"
        and r.get("master-link-status") == "ok"
        and f"{r.get('master-host')}:{r.get('master-port')}" == master
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the captured Sentinel/HAProxy replies")
    parser.add_argument("--only", help="comma-separated states to write (default: all)")
    args = parser.parse_args(argv)
    only = {s for s in args.only.split(",") if s} if args.only else None
    layout = Layout.for_tests(groups=(GROUP,))
    with tempfile.TemporaryDirectory(prefix="capture-") as tmp, LocalStack(
        Path(tmp), layout
    ) as stack, EventTap(stack) as tap:
        cap = Capture(stack, only, tap.t0)
        a, b = stack.nodes[GROUP + "a"], stack.nodes[GROUP + "b"]
        a_addr, b_addr = f"{a.host}:{a.port}", f"{b.host}:{b.port}"
        print(f"stack up: {a.name}={a_addr} {b.name}={b_addr} sentinels={cap.names}")

        cap.haproxy("initial")
        cap.apply([f"set server {GROUP}_master/{a.name} state ready",
                   f"set server {GROUP}_replicas/{b.name} state ready"])
        cap.haproxy("steady")

        def steady(s: Snapshot) -> bool:
            return all(
                addr_of(v) == a_addr and healthy(replica(v, b_addr), a_addr) for v in s.values()
            )

        s = cap.wait("steady", steady, 30)
        unknown: dict[str, Any] = {}
        for proto in (2, 3):
            c = cap.clients[proto][cap.names[0]]
            pipe = c.pipeline(transaction=False)
            pipe.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "nosuch")
            pipe.execute_command("SENTINEL", "REPLICAS", "nosuch")
            addr_r, repl_r = pipe.execute(raise_on_error=False)
            unknown[f"resp{proto}"] = {
                "SENTINEL GET-MASTER-ADDR-BY-NAME nosuch": addr_r,
                "SENTINEL REPLICAS nosuch (error)": str(repl_r),
            }
        cap.save("steady", f"Every node up: {a.name} master, {b.name} replica linked; epoch 0. "
                 "'unknown_master' holds the replies for a name no sentinel monitors.", s,
                 unknown_master=unknown)

        # -- replica dead -------------------------------------------------------------------
        stack.kill_node(b.name)
        s = cap.wait("replica s_down on every sentinel", lambda s: all(
            "s_down" in (replica(v, b_addr) or {}).get("flags", "") for v in s.values()), 30)
        cap.save("replica_dead", f"{b.name} ({b_addr}) SIGKILLed; every sentinel lists it "
                 "s_down,slave,disconnected; master unchanged.", s)
        stack.start_node(b.name)
        cap.wait("replica healthy again", steady, 60)

        # -- failover -------------------------------------------------------------------------
        t_kill = round((time.monotonic() - cap.t0) * 1000, 1)
        stack.kill_node(a.name)
        s = cap.wait("master o_down on a sentinel", lambda s: any(
            "o_down" in master_entry(v)["flags"] for v in s.values()), 30)
        flags = {n: master_entry(v)["flags"] for n, v in s.items()}
        cap.save("master_down", f"{a.name} ({a_addr}) SIGKILLed; first snapshot (polled every "
                 f"{POLL_S * 1000:g} ms) where a sentinel's SENTINEL MASTERS flags carry o_down. "
                 f"Flags per sentinel: {flags}.", s)

        def selected(s: Snapshot) -> bool:
            return all(addr_of(v) == a_addr for v in s.values()) and any(
                "promoted" in (replica(v, b_addr) or {}).get("flags", "").split(",")
                for v in s.values()
            )

        s_sel = cap.wait("leader's replica flagged promoted, address still the old master",
                         selected, 30)
        sel_resp3 = cap.snap(3)  # right after the RESP2 snapshot, as save() does
        sel_info = cap.info_text()
        sel_leader = next(n for n, v in s_sel.items()
                          if "promoted" in (replica(v, b_addr) or {}).get("flags", "").split(","))
        sel_t = s_sel[sel_leader]["t_ms"]
        sel_flags = (replica(s_sel[sel_leader], b_addr) or {}).get("flags")
        sel_in_resp3 = selected(sel_resp3)

        def promoted(s: Snapshot) -> bool:
            return any(
                addr_of(v) != f"{master_entry(v)['ip']}:{master_entry(v)['port']}"
                and "failover_in_progress" in master_entry(v)["flags"]
                for v in s.values()
            )

        s = cap.wait("leader promoted (addr != entry ip, failover_in_progress)", promoted, 30)
        leader = next(n for n, v in s.items()
                      if addr_of(v) != f"{master_entry(v)['ip']}:{master_entry(v)['port']}")
        shown = {n: (addr_of(v), master_entry(v)["config-epoch"]) for n, v in s.items()}
        deadline = time.monotonic() + 10
        while tap.first(sel_leader, "+promoted-slave") is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no +promoted-slave from {sel_leader} within 10 s")
            time.sleep(POLL_S)
        t_noone = tap.first(sel_leader, "+failover-state-send-slaveof-noone")
        t_promoted = tap.first(sel_leader, "+promoted-slave")
        # The promoted flag itself shows the leader is past selecting the replica; the snapshot must
        # also come before its +promoted-slave (both stamped on receipt, on the same clock).
        if t_promoted is None or not sel_t < t_promoted:
            raise RuntimeError(f"selected snapshot at {sel_t} ms is not before the leader's "
                               f"+promoted-slave ({t_promoted} ms)")
        until = t_promoted + 1
        cap.save("selected", f"Leader {sel_leader} between its +failover-state-send-slaveof-noone "
                 f"(t_ms {t_noone}) and its +promoted-slave (t_ms {t_promoted}): its SENTINEL "
                 f"REPLICAS flags {b.name} ({b_addr}) '{sel_flags}' while every sentinel's "
                 f"GET-MASTER-ADDR-BY-NAME still names {a.name} ({a_addr}); leader snapshot at "
                 f"t_ms {sel_t}. resp3 taken right after resp2 "
                 f"({'still' if sel_in_resp3 else 'NO LONGER'} in the window). 'events' = every "
                 f"sentinel's events since the kill up to the leader's +promoted-slave, stamped "
                 f"on receipt (same clock as t_ms). Polled every {POLL_S * 1000:g} ms.",
                 s_sel, resp3=sel_resp3, info_text=sel_info, leader=sel_leader,
                 events={n: [e for e in list(evs) if t_kill <= e[0] <= until]
                         for n, evs in tap.events.items()})
        cap.save("promoted", f"Right after the leader's +promoted-slave: leader {leader} answers "
                 f"GET-MASTER-ADDR-BY-NAME {b_addr} while its SENTINEL MASTERS entry keeps "
                 f"{a_addr} with failover_in_progress and the new config-epoch. (address, epoch) "
                 f"per sentinel in resp2: {shown}. Polled every {POLL_S * 1000:g} ms.", s,
                 leader=leader)

        def switched(s: Snapshot) -> bool:
            return all(
                addr_of(v) == b_addr
                and f"{master_entry(v)['ip']}:{master_entry(v)['port']}" == b_addr
                and "failover_in_progress" not in master_entry(v)["flags"]
                and "s_down" in (replica(v, a_addr) or {}).get("flags", "")
                for v in s.values()
            )

        s = cap.wait("every sentinel switched, old master an s_down replica", switched, 30)
        cap.save("switched", f"After +switch-master on every sentinel (failover ended): {b.name} "
                 f"({b_addr}) master at epoch 1; dead {a.name} listed as an s_down replica.", s)
        cap.apply([f"set server {GROUP}_master/{a.name} state maint",
                   f"shutdown sessions server {GROUP}_master/{a.name}",
                   f"set server {GROUP}_replicas/{b.name} state maint",
                   f"set server {GROUP}_master/{b.name} state ready"])
        cap.haproxy("switched")

        # -- old master back as a master -----------------------------------------------------
        stack.start_node(a.name)

        def returned(s: Snapshot) -> bool:
            for v in s.values():
                r = replica(v, a_addr)
                if r is None or r.get("role-reported") != "master" or "s_down" in r["flags"]:
                    return False
            return True

        s = cap.wait("old master listed as replica reporting role master", returned, 10)
        cap.save("old_master_returned", f"{a.name} restarted with its own config (no replicaof): "
                 "every sentinel lists it as a replica (flags slave, no s_down) with role-reported "
                 "master, master-link-status err, before +convert-to-slave.", s)

        s = cap.wait("old master converted and linked", lambda s: all(
            addr_of(v) == b_addr and healthy(replica(v, a_addr), b_addr) for v in s.values()), 40)
        cap.save("converted", f"After +convert-to-slave: {a.name} a linked replica of {b.name}; "
                 "steady at epoch 1.", s)

        # -- TILT ----------------------------------------------------------------------------
        stack.pause_sentinel(2)
        time.sleep(3.0)  # the stimulus itself: TILT needs the timer to stall for > 2 s
        stack.resume_sentinel(2)
        s = cap.wait("sentinel2 in TILT", lambda s: str(
            s[cap.names[2]]["INFO sentinel"]["sentinel_tilt"]) == "1", 10)
        cap.save("tilt", f"sentinel2 ({cap.names[2]}) SIGSTOPped for 3 s then resumed: its INFO "
                 "sentinel says sentinel_tilt:1 (for 30 s).", s)
        for c in (*cap.clients[2].values(), *cap.clients[3].values()):
            c.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
