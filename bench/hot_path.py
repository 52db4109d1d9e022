"""The daemon's hot path at N groups: event -> command applied, bursts, a slow Sentinel, a hung
HAProxy, and its idle CPU.

What is real and what is replayed (as in bench/daemon_rss.py):
- HAProxy is real: one or two `haproxy` processes with a generated config of N groups
  (reconcile_scale.haproxy_config, plus a frontend that reads lease.map so the write lease is
  pushed as in production);
- the daemon is real: `python -m controller run` as a child process (lab.daemon), JSON logs at
  level info into a file, default settings (resync every 5 s, lease on);
- Sentinel is REPLAYED (bench/replay_sentinel.py): 3 RESP2 servers in this process answering
  with captured real replies per group. A failover of group I = every replay server switches
  I's replies to the other node at the next epoch, then each publishes `+switch-master`, as
  real Sentinels do.

Scenarios (`--scenario`, repeatable; default all):
- `latency`: N = 1, 100, 1000 (`--sizes`); one group at a time fails over (random group, a
  random 20-80 ms apart, so some events meet a periodic full pass), `--failovers` times.
  Latency = the daemon's own `latency_ms` of the `server_state_changed` that made the new
  master ready (hint received -> HAProxy acknowledged), and `publish -> applied` = that log
  line's time minus the first `+switch-master` publish (both wall clock, same machine).
  Broken down (`breakdown`) into the Sentinel round of the targeted pass that decided the
  failover (its `sentinels_ms`, found after the group's `master_changed` line) and the rest
  (hint -> pass start, decide, hand-over to the HAProxy worker, HAProxy read and `set
  server`), for all failovers and for the slowest tenth. Then (`--probes`, not during the
  measured failovers) the bench times the replay servers itself: the daemon's targeted read
  (`SENTINEL MASTER g`, `GET-MASTER-ADDR-BY-NAME g`, `REPLICAS g`, pipelined, all three
  servers at once) when quiet and right after a failover is published.
  `--publishers 1` publishes each `+switch-master` from one replay server only (the others'
  events usually land inside the first pass and start a second one).
- `burst`: N = `--burst-groups` (1000), 100 of them fail over 10 ms apart (one second); each
  group's own event -> its new master ready (broken down as above), the daemon's CPU time
  and its full passes from the first event to 2 s after the last. `--new-epoch`: each
  replay server also publishes `+new-epoch` 1 s before each group's `+switch-master` (a real
  failover's election; names no group).
- `slow`: as `latency` with one of the three Sentinels answering its command connection
  500 ms late (`--slow-s`); N = 1 and 1000.
- `hung`: N = 100, two HAProxy; the first is SIGSTOPped, then `--hung-failovers` failovers:
  latency on the healthy one; then SIGCONT: time until the hung one shows every new master.
- `idle`: N = 1 and 1000, nothing happens for `--idle-s` (30 s): the daemon's CPU time
  (utime+stime from /proc) per second of wall clock, with the default resync (5 s) and without
  periodic passes (resync 1 h: the cost between them).
`--pin` (any scenario): the daemon and HAProxy on CPU 0, the bench and its replay servers on
CPU 1, so that the harness does not share the daemon's core (Sentinels run on other hosts in
production).
Prints tables (n, p50, p90, p99, max in ms); `--json` for machine output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import select
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import hiredis

from controller.haproxy import HAProxyClient, HAProxyError
from controller.model import AdminState
from controller.sentinel import packed_command
from controller.sentinel_parse import group_commands
from lab.daemon import ControllerDaemon
from lab.localstack import free_port
from lab.procs import ManagedProcess, start_haproxy
from lab.wait import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reconcile_scale
from replay_sentinel import HOSTS, ReplayProcess, failover, start_replay

CONVERGE_DEADLINE_S = 120.0
APPLY_DEADLINE_S = 30.0
KEEP_LOGS: Path | None = None  # --keep-logs: where each rig's daemon log is copied
DAEMON_ARGS: list[str] = []  # --daemon-arg: extra flags for every rig's daemon
PIN = False  # --pin: the daemon and HAProxy on CPU 0, the replayed Sentinels and bench on CPU 1


@contextlib.contextmanager
def on_cpu(cpu: int) -> Iterator[None]:
    """With --pin: what this thread starts meanwhile (children inherit it) runs on `cpu`
    only; this thread then goes back to the bench's CPU (1)."""
    if not PIN:
        yield
        return
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, {1})


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


def stats(name: str, values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"what": name, "n": 0}
    return {"what": name, "n": len(values), "p50": round(statistics.median(values), 3),
            "p90": round(pct(values, 90), 3), "p99": round(pct(values, 99), 3),
            "max": round(max(values), 3)}


class LogTail:
    """The daemon's JSON log lines, read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.buf = b""
        self.lines: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        self.buf += data
        *complete, self.buf = self.buf.split(b"\n")
        new = []
        for raw in complete:
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if isinstance(obj, dict):
                new.append(obj)
        self.lines += new
        return new


def ts(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(line["ts"]).replace("Z", "+00:00")).timestamp()


def pass_of(lines: Sequence[dict[str, Any]], group: int, mark: int) -> dict[str, Any] | None:
    """The targeted pass that decided group I's failover: its `master_changed` line (the
    first for the group from log line `mark` on, from a `+switch-master`) is followed, in the
    loop thread's order, by that pass's `pass` line (the worker's lines may come between)."""
    k = mark
    for k in range(mark, len(lines)):
        line = lines[k]
        if line.get("event") == "master_changed" and line.get("group") == f"g{group}":
            if line.get("trigger") != "+switch-master":
                return None  # decided by a full-pass chunk that read the group first
            break
    else:
        return None
    for line in lines[k + 1:]:
        if line.get("event") == "pass":
            return line
    return None


def breakdown(rig: Rig, failovers: Sequence[tuple[int, int, float]], label: str
              ) -> list[dict[str, Any]]:
    """Rows splitting each failover's `latency_ms` (group, log mark, latency) into the pass's
    Sentinel round (its `sentinels_ms`) and the rest (hint -> pass start, decide, hand-over to
    the worker, HAProxy read and `set server`), overall and for the slowest tenth."""
    deadline = time.monotonic() + 5.0
    found: list[tuple[float, float]] = []
    while True:
        rig.tail.poll()
        found = [(lat, float(p["sentinels_ms"])) for i, mark, lat in failovers
                 if (p := pass_of(rig.tail.lines, i, mark)) is not None
                 and "sentinels_ms" in p]
        if len(found) == len(failovers) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if not found:
        return [{"what": f"{label}: no pass line with sentinels_ms", "n": 0}]
    rows = [stats(f"{label}:   Sentinel round (pass sentinels_ms)", [s for _, s in found]),
            stats(f"{label}:   rest (hint -> applied - round)", [lat - s for lat, s in found])]
    cut = pct([lat for lat, _ in found], 90)
    tail = [(lat, s) for lat, s in found if lat >= cut]
    rows += [stats(f"{label}:   slowest 10%: hint -> applied", [lat for lat, _ in tail]),
             stats(f"{label}:   slowest 10%: Sentinel round", [s for _, s in tail]),
             stats(f"{label}:   slowest 10%: rest", [lat - s for lat, s in tail])]
    if len(found) < len(failovers):
        rows[0]["unmatched"] = len(failovers) - len(found)
    return rows


def targeted_read(group: int) -> bytes:
    """The daemon's targeted read of one group, encoded as it pipelines it to each Sentinel."""
    return b"".join(map(packed_command, group_commands([f"g{group}"])))


class Prober:
    """A client of its own on each replay server, timing the daemon's targeted read (three
    commands pipelined, all servers at once under one select, as the daemon asks): ms until
    each server's three replies are in, and until the second (a majority) is."""

    def __init__(self, servers: Sequence[ReplayProcess]) -> None:
        self.socks = []
        for s in servers:
            sock = socket.create_connection((s.host, s.port), timeout=5)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            self.socks.append(sock)

    def read(self, group: int) -> tuple[list[float], float]:
        req = targeted_read(group)
        want = len(group_commands(["g"]))
        readers = [hiredis.Reader() for _ in self.socks]
        got = [0] * len(self.socks)
        done: list[float | None] = [None] * len(self.socks)
        t0 = time.perf_counter()
        for sock in self.socks:
            sock.send(req)
        deadline = t0 + 5.0
        while any(d is None for d in done):
            waiting = [s for s, d in zip(self.socks, done, strict=True) if d is None]
            ready, _, _ = select.select(waiting, [], [], max(0.0, deadline - time.perf_counter()))
            if not ready:
                raise RuntimeError("replay server: no answer to the targeted read in 5 s")
            now = time.perf_counter()
            for sock in ready:
                k = self.socks.index(sock)
                readers[k].feed(sock.recv(65536))
                while readers[k].gets() is not False:
                    got[k] += 1
                if got[k] >= want:
                    done[k] = (now - t0) * 1000
        each = [float(d) for d in done if d is not None]
        return each, sorted(each)[1]

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


def probe_replay(rig: Rig, count: int, label: str) -> list[dict[str, Any]]:
    """How fast the replay servers answer the daemon's targeted read: quiet (nothing for
    20-80 ms), and right after a failover (fired as soon as the three `+switch-master` are
    published, so alongside the daemon's own read of the group). Not during the measured
    failovers: this third client is extra load."""
    rng = random.Random(5)
    prober = Prober(rig.servers)
    quiet_each: list[float] = []
    quiet_major: list[float] = []
    hot_each: list[float] = []
    hot_major: list[float] = []
    try:
        for _ in range(count):
            time.sleep(rng.uniform(0.02, 0.08))
            each, major = prober.read(rng.randrange(rig.n))
            quiet_each += each
            quiet_major.append(major)
            time.sleep(rng.uniform(0.02, 0.08))
            i = rng.randrange(rig.n)
            texts = [s.failover(i) for s in rig.servers]
            for s, text in list(zip(rig.servers, texts, strict=True))[:rig.publishers]:
                s.publish("+switch-master", text)
            each, major = prober.read(i)
            hot_each += each
            hot_major.append(major)
    finally:
        prober.close()
    return [stats(f"{label}: replay read, quiet: each server", quiet_each),
            stats(f"{label}: replay read, quiet: 2nd of 3 (majority)", quiet_major),
            stats(f"{label}: replay read, after failover: each server", hot_each),
            stats(f"{label}: replay read, after failover: 2nd of 3", hot_major)]


def lease_frontend(workdir: Path) -> str:
    """A frontend that makes HAProxy load lease.map (as haproxy/haproxy.cfg does)."""
    lease_map = workdir / "lease.map"
    lease_map.write_text("")
    return (f"frontend lease_check\n    bind unix@{workdir}/lease-fe.sock\n"
            "    tcp-request connection set-var(sess.now_ms) date(0,ms)\n"
            f"    tcp-request connection reject if {{ str(lease),map_str_int({lease_map},0),"
            "sub(sess.now_ms) -m int le 0 }\n    default_backend g0_master\n")


class Rig:
    """HAProxy(s), replayed Sentinels and the daemon for N groups; stopped by PID."""

    def __init__(self, n: int, haproxies: int = 1,
                 delays: tuple[float, float, float] = (0.0, 0.0, 0.0),
                 resync_s: float | None = None, publishers: int = 3) -> None:
        self.n = n
        self.publishers = publishers  # replay servers that publish each `+switch-master`
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-hot-"))
        self.procs: list[ManagedProcess] = []
        self.clients: list[HAProxyClient] = []
        self.servers: list[ReplayProcess] = []
        self.daemon: ControllerDaemon | None = None
        try:
            for k in range(haproxies):
                d = self.tmp / f"h{k}"
                d.mkdir()
                sock = d / "admin.sock"
                cfg = d / "haproxy.cfg"
                cfg.write_text(reconcile_scale.haproxy_config(n, sock) + lease_frontend(d))
                with on_cpu(0):
                    self.procs.append(start_haproxy(cfg, sock, d, name=f"haproxy{k}",
                                                    timeout_s=reconcile_scale.HAPROXY_START_S))
                self.clients.append(HAProxyClient(str(sock), timeout_s=10.0))
            self.servers = start_replay(n, [free_port([h]) for h in HOSTS], delays)
            self.log = self.tmp / "daemon.log"
            self.daemon = ControllerDaemon([s.addr for s in self.servers],
                                           [c.target for c in self.clients], self.log,
                                           resync_interval_s=resync_s,
                                           extra_args=DAEMON_ARGS)
            self.tail = LogTail(self.log)
            with on_cpu(0):
                self.daemon.start()
            wait_until(self._converged, CONVERGE_DEADLINE_S, f"N={n}: daemon converged",
                       interval_s=0.1)
        except BaseException:
            self.stop()
            raise

    def _converged(self) -> bool:
        assert self.daemon is not None
        if not self.daemon.alive():
            raise RuntimeError(f"daemon exited: {self.daemon.text()[-2000:]}")
        return all(self.masters_ready(c, range(self.n)) for c in self.clients)

    def masters_ready(self, client: HAProxyClient, groups: Sequence[int] | range) -> bool:
        """Every group's write backend has exactly its replayed master ready."""
        try:
            st = client.state()
        except HAProxyError:
            return False
        for i in groups:
            want = self.servers[0].master_of(i)
            servers = st.backends.get(f"g{i}_master", {})
            ready = {name for name, s in servers.items() if s.admin is AdminState.READY}
            if ready != {want}:
                return False
        return True

    def applied(self, group: int, server: str, target: str, after: float,
                timeout_s: float = APPLY_DEADLINE_S, mark: int | None = None) -> dict[str, Any]:
        """The daemon's log line that set `server` ready in group's write backend on `target`
        (the first after wall time `after`, looking from log line `mark` on)."""
        seen = len(self.tail.lines) if mark is None else mark

        def found() -> dict[str, Any] | None:
            nonlocal seen
            self.tail.poll()
            start = max(0, seen - 1)
            seen = len(self.tail.lines)
            for line in self.tail.lines[start:]:  # only the new ones: the bench must stay idle
                if (line.get("event") == "server_state_changed" and line.get("to") == "ready"
                        and line.get("backend") == f"g{group}_master"
                        and line.get("server") == server and line.get("haproxy") == target
                        and ts(line) >= after - 0.005):
                    return line
            return None
        return wait_until(found, timeout_s, f"g{group} {server} ready on {target}",
                          interval_s=0.005)

    def cpu_s(self) -> float:
        assert self.daemon is not None and self.daemon.pid is not None
        fields = Path(f"/proc/{self.daemon.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def problems(self) -> list[str]:
        return self.daemon.problems() if self.daemon is not None else []

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        for p in self.procs:
            p.send_signal(signal.SIGCONT) if p.alive() else None
            p.stop()
        for s in self.servers:
            s.stop()
        log = getattr(self, "log", None)  # unset when the rig failed to start
        if KEEP_LOGS is not None and log is not None and log.exists():
            KEEP_LOGS.mkdir(parents=True, exist_ok=True)
            shutil.copy(log, KEEP_LOGS / f"daemon-N{self.n}-{int(time.time())}.log")
        shutil.rmtree(self.tmp, ignore_errors=True)


def one_by_one(rig: Rig, count: int, target: str
               ) -> tuple[list[float], list[float], list[tuple[int, int, float]]]:
    """`count` failovers, one at a time; (daemon latency_ms, publish -> applied ms, and per
    failover its group, log mark and latency for `breakdown`)."""
    own: list[float] = []
    ext: list[float] = []
    marks: list[tuple[int, int, float]] = []
    rng = random.Random(12)
    for _ in range(count):
        i = rng.randrange(rig.n)
        rig.tail.poll()
        mark = len(rig.tail.lines)
        t_pub, new = failover(rig.servers, i, rig.publishers)
        line = rig.applied(i, new, target, t_pub, mark=mark)
        own.append(float(line["latency_ms"]))
        ext.append((ts(line) - t_pub) * 1000)
        marks.append((i, mark, own[-1]))
        time.sleep(rng.uniform(0.02, 0.08))  # spread the events over the resync period
    return own, ext, marks


def scenario_latency(args: argparse.Namespace, delays: tuple[float, float, float],
                     label: str, sizes: Sequence[int]) -> list[dict[str, Any]]:
    out = []
    for n in sizes:
        rig = Rig(n, delays=delays, publishers=args.publishers)
        try:
            time.sleep(1.0)  # let the start settle (first full passes)
            own, ext, marks = one_by_one(rig, args.failovers, rig.clients[0].target)
            out.append(stats(f"{label} N={n}: hint -> applied (daemon)", own))
            out += breakdown(rig, marks, f"{label} N={n}")
            out.append(stats(f"{label} N={n}: publish -> applied", ext))
            if args.probes and not any(delays):  # a late server would hold every probe
                out += probe_replay(rig, args.probes, f"{label} N={n}")
            out[-1]["problems"] = rig.problems()
        finally:
            rig.stop()
    return out


def scenario_burst(args: argparse.Namespace) -> list[dict[str, Any]]:
    n = args.burst_groups
    rig = Rig(n, publishers=args.publishers)
    try:
        time.sleep(1.0)
        groups = random.Random(7).sample(range(n), 100)
        published: list[tuple[int, float, str]] = []
        rig.tail.poll()
        mark = len(rig.tail.lines)
        # 10 ms apart; with --new-epoch each group's `+new-epoch` 1 s before its switch, from
        # each publisher (a real failover's leader election, ~1 s before `+switch-master`).
        lead_s = 1.0 if args.new_epoch else 0.0
        steps = [(k * 0.01 + lead_s, "switch", k, i) for k, i in enumerate(groups)]
        if args.new_epoch:
            steps += [(k * 0.01, "epoch", k, i) for k, i in enumerate(groups)]
        steps.sort()
        cpu0 = rig.cpu_s()
        t0 = time.monotonic()
        for at, what, k, i in steps:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            if what == "epoch":
                for srv in rig.servers[:rig.publishers]:
                    srv.publish("+new-epoch", str(1000 + k))
                continue
            t_pub, new = failover(rig.servers, i, rig.publishers)
            published.append((i, t_pub, new))
        own, ext = [], []
        marks: list[tuple[int, int, float]] = []
        target = rig.clients[0].target
        for i, t_pub, new in published:
            line = rig.applied(i, new, target, t_pub, mark=mark)
            own.append(float(line["latency_ms"]))
            ext.append((ts(line) - t_pub) * 1000)
            marks.append((i, mark, own[-1]))
        # The daemon's CPU over a fixed window: the events, then 2 s for the passes they start.
        time.sleep(max(0.0, t0 + lead_s + 3.0 - time.monotonic()))
        cpu_ms = (rig.cpu_s() - cpu0) * 1000
        rig.tail.poll()
        full = sum(1 for e in rig.tail.lines[mark:]
                   if e.get("event") == "pass" and e.get("scope") == "full")
        label = f"burst N={n}, 100 fail over in 1 s" + (" +new-epoch"
                                                        if args.new_epoch else "")
        rows = [stats(f"{label}: hint -> applied (daemon)", own),
                *breakdown(rig, marks, label),
                stats(f"{label}: publish -> applied", ext)]
        rows[-1]["over_50ms"] = sum(1 for x in ext if x > 50)
        rows.append({"what": f"{label}: daemon CPU ms, full passes", "n": 1,
                     "p50": round(cpu_ms, 1), "p90": full})  # in the p50 / p90 columns
        rows[-1]["problems"] = rig.problems()
        return rows
    finally:
        rig.stop()


def scenario_hung(args: argparse.Namespace) -> list[dict[str, Any]]:
    n = 100
    rig = Rig(n, haproxies=2)
    try:
        time.sleep(1.0)
        hung, healthy = rig.procs[0], rig.clients[1]
        hung.send_signal(signal.SIGSTOP)
        time.sleep(3.0)  # the daemon's exchanges with it time out meanwhile
        own, ext, _ = one_by_one(rig, args.hung_failovers, healthy.target)
        time.sleep(0.5)
        t_cont = time.monotonic()
        hung.send_signal(signal.SIGCONT)
        wait_until(lambda: rig.masters_ready(rig.clients[0], range(n)), 30,
                   "the hung HAProxy to be caught up", interval_s=0.005)
        caught_up_ms = (time.monotonic() - t_cont) * 1000
        rows = [stats(f"hung HAProxy N={n}: healthy one, hint -> applied (daemon)", own),
                stats(f"hung HAProxy N={n}: healthy one, publish -> applied", ext),
                {"what": f"hung HAProxy N={n}: SIGCONT -> caught up", "n": 1,
                 "p50": round(caught_up_ms, 1)}]
        rows[-1]["problems"] = rig.problems()
        return rows
    finally:
        rig.stop()


def scenario_idle(args: argparse.Namespace) -> list[dict[str, Any]]:
    """CPU with nothing happening: default resync (5 s), and without periodic passes (1 h:
    what the daemon costs between them: watchers' pings, lease, HAProxy probes)."""
    out = []
    for n, resync in ((1, None), (1000, None), (1, 3600.0), (1000, 3600.0)):
        rig = Rig(n, resync_s=resync)
        try:
            time.sleep(3.0)
            c0, t0 = rig.cpu_s(), time.monotonic()
            time.sleep(args.idle_s)  # the measurement window itself
            cpu = rig.cpu_s() - c0
            wall = time.monotonic() - t0
            period = "resync 5 s" if resync is None else "no resync"
            out.append({"what": f"idle N={n}, {period}: daemon CPU, % of one core", "n": 1,
                        "p50": round(100 * cpu / wall, 2), "problems": rig.problems()})
        finally:
            rig.stop()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenario", action="append",
                   choices=["latency", "burst", "slow", "hung", "idle"])
    p.add_argument("--sizes", default="1,100,1000")
    p.add_argument("--failovers", type=int, default=200)
    p.add_argument("--burst-groups", type=int, default=1000)
    p.add_argument("--slow-s", type=float, default=0.5)
    p.add_argument("--hung-failovers", type=int, default=20)
    p.add_argument("--idle-s", type=float, default=30.0)
    p.add_argument("--publishers", type=int, default=3, choices=[1, 2, 3],
                   help="replay servers publishing each +switch-master (latency, burst)")
    p.add_argument("--probes", type=int, default=100,
                   help="replay-server reads timed from the bench after `latency` (0: none)")
    p.add_argument("--new-epoch", action="store_true",
                   help="burst: each replay server also publishes `+new-epoch` 1 s before each "
                   "group's `+switch-master`, as a real failover's election does")
    p.add_argument("--pin", action="store_true",
                   help="the daemon and HAProxy on CPU 0, the replayed Sentinels and the bench "
                   "on CPU 1 (the harness off the daemon's core, as Sentinels on other hosts "
                   "are in production)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep-logs", type=Path, default=None,
                   help="copy each daemon's log into this directory before its rig stops")
    p.add_argument("--daemon-arg", action="append", default=[],
                   help="an extra flag for the daemon, e.g. --daemon-arg=--log-level=debug "
                   "(repeatable)")
    args = p.parse_args(argv)
    global KEEP_LOGS, DAEMON_ARGS, PIN  # bench-wide options, read by Rig
    KEEP_LOGS = args.keep_logs
    DAEMON_ARGS = list(args.daemon_arg)
    PIN = args.pin
    if PIN:
        if not {0, 1} <= os.sched_getaffinity(0):
            p.error("--pin needs CPUs 0 and 1")
        os.sched_setaffinity(0, {1})  # before any thread or child: they inherit it
    # The replay servers are threads of this process: without this, a reply waits up to 5 ms
    # for the GIL (the daemon sets the same for its own threads).
    sys.setswitchinterval(0.0005)
    chosen = args.scenario or ["latency", "burst", "slow", "hung", "idle"]
    rows: list[dict[str, Any]] = []
    sizes = [int(x) for x in args.sizes.split(",")]
    for name in chosen:
        if name == "latency":
            rows += scenario_latency(args, (0.0, 0.0, 0.0), "one failover", sizes)
        elif name == "slow":
            rows += scenario_latency(args, (0.0, 0.0, args.slow_s),
                                     f"one Sentinel {args.slow_s * 1000:g} ms late",
                                     [s for s in (1, 1000) if s in sizes] or sizes[:1])
        elif name == "burst":
            rows += scenario_burst(args)
        elif name == "hung":
            rows += scenario_hung(args)
        elif name == "idle":
            rows += scenario_idle(args)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'':<72}{'n':>5}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}  (ms, idle: %)")
    for r in rows:
        cells = "".join(f"{r[k]:>9}" if k in r else f"{'':>9}" for k in ("p50", "p90", "p99",
                                                                         "max"))
        print(f"{r['what']:<72}{r['n']:>5}{cells}")
    for r in rows:
        if r.get("problems"):
            print(f"{r['what']}: daemon problems: {r['problems'][:3]}")
        if "over_50ms" in r:
            print(f"{r['what']}: {r['over_50ms']} of 100 groups over 50 ms")
        if r.get("unmatched"):
            print(f"{r['what']}: {r['unmatched']} failovers without their pass line")
    return 0


if __name__ == "__main__":
    sys.exit(main())
