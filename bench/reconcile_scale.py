"""Full reconcile of N master groups, N = 1, 10, 100, 1000: time per pass and RSS.

For each N, in a fresh child process (so RSS is per N):
- a real `haproxy` runs a generated config with N groups (backends `gI_master` and
  `gI_replicas`, 2 servers each, `disabled` as in haproxy/haproxy.cfg, no checks);
- the Sentinel side is fed with replies shaped exactly like captured real ones
  (tests/data/sentinel_steady.json / sentinel_switched.json, from 3 sentinels), re-parsed on
  every pass as the real reader does; only the network round trip to Sentinel is left out;
- the real `Controller.reconcile` (observe + decide + plan + apply + verify) runs against it:
  the first pass (2N commands from a fresh HAProxy), 20 quiet passes (nothing to change),
  and one pass after every group failed over at once (about 4N commands).
Prints a table; `--json` for machine output. Goals: 1,000 groups <= 1 s per pass, RSS <= 60 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
SIZES = (1, 10, 100, 1000)
QUIET_PASSES = 20
BASE_PORT = 10000
SENTINELS = ("127.0.0.20:26379", "127.0.0.21:26379", "127.0.0.22:26379")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def haproxy_config(n: int, socket_path: Path) -> str:
    lines = [
        "global",
        f"    stats socket {socket_path} mode 600 level admin",
        "    maxconn 1000",
        "defaults",
        "    mode tcp",
        "    timeout client 1h",
        "    timeout server 1h",
        "    timeout connect 1s",
    ]
    for i in range(n):
        port = BASE_PORT + i
        for suffix in ("master", "replicas"):
            lines.append(f"backend g{i}_{suffix}")
            for node, host in (("a", "127.0.0.2"), ("b", "127.0.0.3")):
                lines.append(f"    server g{i}{node} {host}:{port} disabled "
                             "on-marked-down shutdown-sessions")
    return "\n".join(lines) + "\n"


#: How long a haproxy with N groups may take until its admin socket answers.
HAPROXY_START_S = 30.0


def group_replies(state: str, n: int) -> dict[str, dict[str, Any]]:
    """sentinel -> {"info", "masters", "addr": {name: raw}, "replicas": {name: raw}}.

    The captured replies of group `redis1` (nodes 127.0.0.2/3 on the captured port) are
    copied for every group gI with the port BASE_PORT + I."""
    doc = json.loads((DATA / f"sentinel_{state}.json").read_text())
    captured_port = doc["nodes"]["redis1a"].rsplit(":", 1)[1]
    out: dict[str, dict[str, Any]] = {}
    for s_captured, s in zip(doc["sentinels"], SENTINELS, strict=True):
        r = doc["resp2"][s_captured]
        tmpl = json.dumps({
            "master": r["SENTINEL MASTERS"][0],
            "addr": r["SENTINEL GET-MASTER-ADDR-BY-NAME redis1"],
            "replicas": r["SENTINEL REPLICAS redis1"],
        })
        masters, addrs, replicas = [], {}, {}
        for i in range(n):
            g = json.loads(tmpl.replace('"redis1"', f'"g{i}"')
                           .replace(captured_port, str(BASE_PORT + i)))
            masters.append(g["master"])
            addrs[f"g{i}"] = g["addr"]
            replicas[f"g{i}"] = g["replicas"]
        info = doc["info_text"][s_captured]  # raw text, as the reader reads `INFO sentinel`
        out[s] = {"info": info, "masters": masters, "addr": addrs, "replicas": replicas}
    return out


def one(n: int) -> dict[str, Any]:
    """Run the passes for N groups in this process; return the numbers."""
    real_stderr = sys.stderr
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the log sink for the whole child
    from controller import logs
    from controller.cli import roster_for
    from controller.haproxy import HAProxyClient
    from controller.loop import Controller
    from controller.model import SentinelView
    from controller.sentinel_parse import Head, parse_groups, parse_head
    from controller.settings import Settings
    from lab.procs import ManagedProcess, start_haproxy

    logs.setup("json", "info")  # the daemon's own logging, into /dev/null
    rss_imports = rss_mb()

    class CapturedReader:
        """The loop's SentinelSource, answering from captured-real-shaped replies (no network):
        the same parsers as the real reader, without the sockets."""

        def __init__(self, replies: dict[str, dict[str, Any]], names: list[str]) -> None:
            self.names = list(names)
            self.replies = replies

        @property
        def master_names(self) -> list[str]:
            return list(self.names)

        def discover(self) -> list[Any]:
            return []

        def busy(self) -> bool:
            return False

        def poll(self) -> None:
            pass

        def _head(self, s: str) -> Head:
            myid = f"{list(self.replies).index(s) + 1:040d}"  # one ID per Sentinel
            return parse_head(self.replies[s]["info"], myid)

        def head(self, skip: Collection[str] = (), patient: bool = False,
                 on_late: Any = None) -> list[SentinelView]:
            return [SentinelView(s, myid=self._head(s).myid) for s in self.replies]

        def read(self, groups: Sequence[str], skip: Collection[str] = (),
                 prefill: Any = None, enough: Any = None, on_late: Any = None,
                 discover: bool = False) -> list[SentinelView]:
            views = []
            for s, r in self.replies.items():
                entries = {m[1]: m for m in r["masters"]}
                pipeline = []
                for m in groups:
                    pipeline += [entries[m], r["addr"][m], r["replicas"][m]]
                views.append(parse_groups(s, groups, pipeline, self._head(s))[0])
            return views

    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    sock = tmp / "admin.sock"
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(haproxy_config(n, sock))
    proc: ManagedProcess | None = None
    try:
        proc = start_haproxy(cfg, sock, tmp, timeout_s=HAPROXY_START_S)
        client = HAProxyClient(str(sock), timeout_s=10.0)
        names = [f"g{i}" for i in range(n)]
        steady = group_replies("steady", n)
        switched = group_replies("switched", n)
        rss_fixtures = rss_mb()
        # No lease: nothing renews it in this bench (a pass after its TTL would fence all).
        settings = Settings(sentinels=SENTINELS, haproxy_sockets=(str(sock),), write_lease=False)
        reader = CapturedReader(steady, names)
        ctl = Controller(settings, reader, [client], roster=roster_for(settings))  # as `run`

        def timed(trigger: str) -> tuple[float, int]:
            t = time.perf_counter()
            res = ctl.reconcile(trigger)
            ms = (time.perf_counter() - t) * 1000
            cmds = sum(len(o.results) for o in res.haproxies)
            bad = [o.error for o in res.haproxies if o.error]
            bad += [r.output for o in res.haproxies for r in o.results if not r.ok]
            if bad or any(o.drift_after for o in res.haproxies):
                raise RuntimeError(f"N={n} {trigger}: {bad[:3]} drift left")
            return ms, cmds

        first_ms, first_cmds = timed("first")
        quiet = [timed("resync")[0] for _ in range(QUIET_PASSES)]
        reader.replies = switched
        fo_ms, fo_cmds = timed("+switch-master")
        reader.replies = steady
        back_ms, back_cmds = timed("+switch-master")
        out = {
            "groups": n,
            "servers": 4 * n,
            "first_pass_ms": round(first_ms, 2),
            "first_pass_commands": first_cmds,
            "quiet_pass_median_ms": round(statistics.median(quiet), 2),
            "quiet_pass_max_ms": round(max(quiet), 2),
            "failover_pass_ms": round(fo_ms, 2),
            "failover_pass_commands": fo_cmds,
            "failback_pass_ms": round(back_ms, 2),
            "failback_pass_commands": back_cmds,
            "rss_after_imports_mb": round(rss_imports, 1),
            "rss_bench_fixtures_mb": round(rss_fixtures - rss_imports, 1),
            "rss_mb": round(rss_mb(), 1),
            "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
    except Exception as e:
        print(f"N={n}: {e}", file=real_stderr)
        raise
    finally:
        if proc is not None:
            proc.stop(grace_s=10)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def table(rows: Sequence[dict[str, Any]]) -> str:
    head = (f"{'groups':>7} {'servers':>8} {'first pass':>16} {'quiet pass med/max':>20} "
            f"{'all fail over':>18} {'RSS':>8} {'maxRSS':>8} {'fixtures':>9}")
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['groups']:>7} {r['servers']:>8} "
            f"{r['first_pass_ms']:>8.1f} ms ({r['first_pass_commands']:>4}) "
            f"{r['quiet_pass_median_ms']:>9.1f}/{r['quiet_pass_max_ms']:<7.1f}ms "
            f"{r['failover_pass_ms']:>8.1f} ms ({r['failover_pass_commands']:>4}) "
            f"{r['rss_mb']:>5.1f} MB {r['maxrss_mb']:>5.1f} MB "
            f"{r['rss_bench_fixtures_mb']:>6.1f} MB"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    p.add_argument("--json", action="store_true")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one)))
        return 0
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        res = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True,
                             text=True, timeout=600, check=False)
        if res.returncode != 0:
            print(f"N={n} failed:\n{res.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print("full reconcile pass against a real haproxy (commands in parentheses); "
              "Sentinel replies captured-real-shaped, parsed every pass")
        print(table(rows))
        worst = rows[-1]
        print(f"goal: 1,000 groups <= 1000 ms per pass, RSS <= 60 MB -> N={worst['groups']}: "
              f"quiet {worst['quiet_pass_median_ms']} ms, failover {worst['failover_pass_ms']} "
              f"ms, maxRSS {worst['maxrss_mb']} MB (of which {worst['rss_bench_fixtures_mb']} MB "
              "are the bench's own reply fixtures, not the controller)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
