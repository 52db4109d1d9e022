"""Produce the real samples quoted in docs/operations.md (log lines, CLI output, metrics).

Runs the reference layout (3 groups) as local processes, the daemon with JSON logs and metrics,
then walks through: initial drift (`status`, `reconcile --dry-run`), start-up, a master killed
(failover), the old master back, an HAProxy restart, a lost Sentinel majority, an HAProxy whose
socket is only `level operator` (refused commands), and prints each step's new log lines.

    .venv/bin/python scripts/ops_samples.py [WORKDIR]

Everything it starts is stopped by PID at the end. Not a test: it prints what happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from lab.localstack import Layout, LocalStack, render_haproxy_config
from lab.procs import HAPROXY, stop_process

ROOT = Path(__file__).resolve().parent.parent


def now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def wait(cond: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if cond():
                return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> int:
    workdir = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="ops-samples-"))
    layout = Layout.for_tests()
    stack = LocalStack(workdir / "stack", layout)
    stack.start()
    daemon: subprocess.Popen[bytes] | None = None
    rogue: subprocess.Popen[bytes] | None = None
    log_path = workdir / "controller.log"
    seen = 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_HAPROXY_")}
    env["PYTHONUNBUFFERED"] = "1"
    sentinels = ",".join(f"{h}:{p}" for h, p in stack.sentinel_addrs)
    targets = ["--sentinel", sentinels, "--haproxy-socket", str(stack.haproxy_socket)]

    def cli(*args: str) -> None:
        print(f"$ sentinel-haproxy {' '.join(args)}")
        r = subprocess.run([sys.executable, "-m", "controller", *args, *targets], env=env,
                           capture_output=True, text=True, timeout=60, check=False)
        print(r.stdout + r.stderr + f"(exit {r.returncode})\n")

    def lines() -> list[dict[str, object]]:
        out = []
        for ln in log_path.read_text().split("\n")[:-1]:
            with contextlib.suppress(ValueError):
                out.append(json.loads(ln))
        return out

    def section(title: str) -> None:
        nonlocal seen
        new = lines()[seen:]
        seen += len(new)
        print(f"==== {title} ({len(new)} log lines)")
        for obj in new:
            print(json.dumps(obj))
        print()

    def has(event: str, **match: object) -> bool:
        return any(o.get("event") == event and all(o.get(k) == v for k, v in match.items())
                   for o in lines()[seen:])

    def ready(backend: str, server: str) -> bool:
        for row in stack.haproxy_command("show servers state").splitlines()[2:]:
            c = row.split()
            if len(c) > 6 and (c[1], c[3]) == (backend, server):
                return int(c[6]) & ~0x04 == 0
        return False

    try:
        print(f"layout: groups {layout.groups}, sentinels {sentinels}, "
              f"socket {stack.haproxy_socket}\n")
        cli("status")
        cli("reconcile", "--dry-run")
        metrics = f"127.0.0.1:{layout.stats_port + 1}"
        with open(log_path, "ab") as logf:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "controller", "run", "--log-format", "json",
                 "--metrics-address", metrics, *targets],
                env=env, stdout=logf, stderr=logf, start_new_session=True)
        wait(lambda: ready("redis1_master", "redis1a"), 20, "initial apply")
        wait(lambda: has("pass", trigger="sentinel_connected", commands=0), 10, "settle")
        time.sleep(0.5)  # sample collection only: let the connect passes finish logging
        section("start-up")
        cli("status")

        print(f"---- {now()} SIGKILL redis1a (the master of redis1)\n")
        stack.kill_node("redis1a")
        wait(lambda: ready("redis1_master", "redis1b"), 40, "failover applied")
        wait(lambda: has("pass", commands=0, trigger="+switch-master") or has("replica_lost"),
             20, "failover settled")
        time.sleep(3)  # sample collection only: the late events of the failover
        section("redis1a killed: failover")

        print(f"---- {now()} redis1a restarted from its original config (as a master)\n")
        stack.start_node("redis1a")
        wait(lambda: ready("redis1_replicas", "redis1a"), 40, "old master back as replica")
        time.sleep(0.5)
        section("redis1a restarted: back as a replica")

        print(f"---- {now()} HAProxy restarted\n")
        stack.restart_haproxy()
        wait(lambda: has("haproxy_restarted"), 10, "restart seen")
        wait(lambda: ready("redis1_master", "redis1b"), 10, "re-applied")
        time.sleep(0.3)
        section("HAProxy restarted")

        stack.haproxy_command("set server redis2_master/redis2a state maint")
        wait(lambda: has("drift_corrected"), 10, "hand edit corrected")
        time.sleep(0.3)
        section("hand edit: set server redis2_master/redis2a state maint")

        print(f"---- {now()} SIGKILL sentinels 1 and 2\n")
        stack.kill_sentinel(1)
        stack.kill_sentinel(2)
        wait(lambda: has("undecided"), 10, "undecided")
        time.sleep(0.5)
        section("2 of 3 sentinels killed")
        cli("status")
        stack.start_sentinel(1)
        stack.start_sentinel(2)
        wait(lambda: has("decided"), 20, "decided again")
        time.sleep(1)
        section("sentinels back")

        # An HAProxy whose admin socket is only `level operator`: every state change refused.
        stack.stop_haproxy()
        wait(lambda: has("haproxy_unreachable"), 10, "haproxy down seen")
        cfg = workdir / "haproxy-operator.cfg"
        cfg.write_text(render_haproxy_config(layout, stack.haproxy_socket)
                       .replace("level admin", "level operator"))
        rogue = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        wait(lambda: has("drift_remains"), 15, "refused commands")
        time.sleep(0.3)
        section("HAProxy restarted with `stats socket ... level operator`")
        rogue.terminate()
        rogue.wait(10)
        rogue = None
        stack.start_haproxy()
        wait(lambda: ready("redis1_master", "redis1b"), 15, "re-applied")
        section("admin socket back")

        with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5) as r:
            text = r.read().decode()
        print("==== /metrics (sentinel_haproxy_* only)")
        print("\n".join(ln for ln in text.splitlines() if "sentinel_haproxy_" in ln))
        with urllib.request.urlopen(f"http://{metrics}/healthz", timeout=5) as r:
            print(f"\n==== /healthz: {r.status} {r.read().decode().strip()}")
    finally:
        for p in (rogue, daemon):
            if p is not None:
                stop_process(p, grace_s=10)
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
