"""RSS of the real daemon (`python -m controller run`) managing N = 1, 100, 1000 master groups.

What is real and what is replayed:
- HAProxy is real: a `haproxy` process with a generated config of N groups (backends
  `gI_master` and `gI_replicas`, 2 servers each, `disabled`, `on-marked-down shutdown-sessions`,
  as reconcile_scale.py generates it) and its own admin socket;
- the daemon is real: `python -m controller run` as a child process (lab.daemon), with its 3
  EventWatcher threads, its SentinelReader, the loop, a full pass every second
  (`--resync-interval-s 1`), JSON logging at level warning into a file;
- Sentinel is REPLAYED (bench/replay_sentinel.py): a real Sentinel cannot monitor 1,000 masters
  on one machine, so 3 small RESP2 servers in this process (threads, each on its own loopback
  address 127.0.0.20-22 and a free port) answer exactly what the daemon sends with the captured
  real replies of tests/data/sentinel_steady.json copied for every group. Any other command is
  answered with an error and reported.

For each N: start haproxy, the replay servers and the daemon; wait (deadline) until every
write backend's `a` server is ready in HAProxy (time to converge, from the daemon's start);
then sample the daemon's VmRSS and VmHWM from /proc/PID/status every 0.5 s for 15 s (the
daemon makes >= 10 full passes meanwhile: counted as `INFO sentinel` requests per replay
server, one per full pass); stop everything by PID. Prints a table; `--json` for machine output.
Goal: RSS <= 60 MB with 1,000 groups.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controller.haproxy import HAProxyClient
from controller.model import AdminState
from lab.daemon import ControllerDaemon
from lab.localstack import free_port
from lab.procs import ManagedProcess, start_haproxy
from lab.wait import wait_until

# bench/ is not a package: its sibling reconcile_scale.py is importable once its directory is
# on the path (haproxy_config, group_replies, DATA and HAPROXY_START_S are shared with it).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import reconcile_scale
from replay_sentinel import HOSTS, ReplayProcess, start_replay

SIZES = (1, 100, 1000)
SAMPLE_EVERY_S = 0.5
SAMPLE_FOR_S = 15.0
CONVERGE_DEADLINE_S = 120.0


# --------------------------------------------------------------------------- the run


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, MB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def converged(client: HAProxyClient, n: int) -> bool:
    try:
        st = client.state()
    except Exception:
        return False
    for i in range(n):
        srv = st.backends.get(f"g{i}_master", {}).get(f"g{i}a")
        if srv is None or srv.admin is not AdminState.READY:
            return False
    return True


def daemon_output(daemon: ControllerDaemon) -> list[str]:
    """Every line the daemon wrote to its log, without the header the lab writes before it
    starts the process (a blank line, then `==== lab: starting <argv>`)."""
    text = daemon.text()
    before, header, rest = text.partition("\n==== lab: starting ")
    if header and not before:
        return rest.partition("\n")[2].splitlines()
    return text.splitlines()


def one(n: int, sample_for_s: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-rss-"))
    sock = tmp / "admin.sock"
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(reconcile_scale.haproxy_config(n, sock))
    servers: list[ReplayProcess] = []
    haproxy: ManagedProcess | None = None
    daemon: ControllerDaemon | None = None
    try:
        haproxy = start_haproxy(cfg, sock, tmp, timeout_s=reconcile_scale.HAPROXY_START_S)
        client = HAProxyClient(str(sock), timeout_s=10.0)
        servers = start_replay(n, [free_port([host]) for host in HOSTS])
        daemon = d = ControllerDaemon([s.addr for s in servers], [str(sock)],
                                      tmp / "daemon.log", ["--log-level", "warning"],
                                      resync_interval_s=1)
        t0 = time.monotonic()
        d.start()

        def daemon_converged() -> bool:
            if not d.alive():
                raise RuntimeError(f"N={n}: daemon exited {d.proc.exited()}; "
                                   f"log: {d.text()[-2000:]}")
            return converged(client, n)

        wait_until(daemon_converged, CONVERGE_DEADLINE_S,
                   f"N={n}: the daemon to set every gI_master/gIa ready", interval_s=0.1,
                   context=lambda: f"log: {d.text()[-2000:]}")
        converge_s = time.monotonic() - t0
        passes_before = min(s.counts["INFO SENTINEL"] for s in servers)
        pid = d.pid  # the daemon's own process (python -m controller run), no wrapper
        assert pid is not None
        rss: list[float] = []
        hwm = 0.0
        end = time.monotonic() + sample_for_s
        while time.monotonic() < end:  # the measurement window, sampled every SAMPLE_EVERY_S
            st = proc_status(pid)
            rss.append(st["VmRSS"])
            hwm = max(hwm, st["VmHWM"])
            time.sleep(SAMPLE_EVERY_S)  # the sampling period itself, not a wait for anything
        passes = min(s.counts["INFO SENTINEL"] for s in servers) - passes_before
        if not d.alive():
            raise RuntimeError(f"N={n}: daemon exited {d.proc.exited()}")
        log_lines = daemon_output(d)
        unknown: Counter[str] = Counter()
        for s in servers:
            unknown.update(s.unknown)
        return {
            "groups": n,
            "servers": 4 * n,
            "converge_s": round(converge_s, 2),
            "rss_median_mb": round(statistics.median(rss), 1),
            "rss_max_mb": round(max(rss), 1),
            "vmhwm_mb": round(hwm, 1),
            "samples": len(rss),
            "full_passes": passes,
            "log_lines": len(log_lines),
            "log_sample": log_lines[:3],
            "unknown_commands": dict(unknown),
            "commands_seen": sorted(set().union(*(s.counts for s in servers))),
        }
    finally:
        if daemon is not None:
            daemon.stop()
        if haproxy is not None:
            haproxy.stop()
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [f"{'groups':>7} {'servers':>8} {'converge':>9} {'RSS median':>11} {'RSS max':>8} "
             f"{'VmHWM':>8} {'passes':>7}"]
    for r in rows:
        lines.append(f"{r['groups']:>7} {r['servers']:>8} {r['converge_s']:>7.2f} s "
                     f"{r['rss_median_mb']:>8.1f} MB {r['rss_max_mb']:>5.1f} MB "
                     f"{r['vmhwm_mb']:>5.1f} MB {r['full_passes']:>7}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    p.add_argument("--sample-for-s", type=float, default=SAMPLE_FOR_S)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = [one(int(x), args.sample_for_s) for x in args.sizes.split(",")]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("real daemon (python -m controller run, full pass every 1 s) + real haproxy; "
          "Sentinel replayed (captured real replies, 3 RESP2 servers)")
    print(table(rows))
    for r in rows:
        if r["unknown_commands"] or r["log_lines"]:
            print(f"N={r['groups']}: unknown commands {r['unknown_commands']}, "
                  f"{r['log_lines']} log lines (level >= warning): {r['log_sample']}")
    worst = rows[-1]
    print(f"commands the daemon sent: {', '.join(worst['commands_seen'])}")
    print(f"goal: RSS <= 60 MB -> N={worst['groups']}: median {worst['rss_median_mb']} MB, "
          f"VmHWM {worst['vmhwm_mb']} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
