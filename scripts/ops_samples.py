"""Produce the real samples quoted in docs/operations.md (log lines, CLI output, metrics).

Runs the reference layout (3 groups) as local processes, the daemon with JSON logs and metrics,
then walks through: initial drift (`status`, `reconcile --dry-run`), start-up, a master killed
(failover), the old master back, an HAProxy restart, a lost Sentinel majority, an HAProxy whose
socket is only `level operator` (refused commands), and prints each step's new log lines.

    .venv/bin/python scripts/ops_samples.py [WORKDIR]

Everything it starts is stopped by PID at the end. Not a test: it prints what happened.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from controller.model import AdminState
from lab.daemon import ControllerDaemon, clean_env
from lab.localstack import Layout, LocalStack, write_haproxy_config
from lab.procs import ManagedProcess, start_haproxy
from lab.wait import WaitTimeout, wait_until

ROOT = Path(__file__).resolve().parent.parent
POLL_S = 0.05


def now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def main() -> int:
    workdir = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="ops-samples-"))
    layout = Layout.for_tests()
    stack = LocalStack(workdir / "stack", layout)
    stack.start()
    rogue: ManagedProcess | None = None
    seen = 0
    sentinels = [str(a) for a in stack.sentinel_addrs]
    targets = ["--sentinel", ",".join(sentinels), "--haproxy-socket", str(stack.haproxy_socket)]
    metrics = f"127.0.0.1:{layout.stats_port + 1}"
    daemon = ControllerDaemon(sentinels, [str(stack.haproxy_socket)],
                              workdir / "controller.log", metrics_address=metrics)

    def cli(*args: str) -> None:
        print(f"$ sentinel-haproxy {' '.join(args)}")
        r = subprocess.run([sys.executable, "-m", "controller", *args, *targets],
                           env=clean_env(), capture_output=True, text=True, timeout=60,
                           check=False)
        print(r.stdout + r.stderr + f"(exit {r.returncode})\n")

    def section(title: str) -> None:
        nonlocal seen
        new = daemon.lines()[seen:]
        seen += len(new)
        print(f"==== {title} ({len(new)} log lines)")
        for obj in new:
            print(json.dumps(obj))
        print()

    def has(event: str, **match: object) -> bool:
        return bool(daemon.events(event, seen, **match))

    def ready(backend: str, server: str) -> bool:
        srv = stack.haproxy_state().backends.get(backend, {}).get(server)
        return srv is not None and srv.admin is AdminState.READY

    def settle(quiet_s: float, timeout_s: float = 30.0) -> None:
        """Sample collection: until the daemon has logged nothing new for `quiet_s` (the late
        lines of the step, so that they land in its section), bounded by `timeout_s`."""
        lines, since = len(daemon.raw_lines()), time.monotonic()

        def quiet() -> bool:
            nonlocal lines, since
            n = len(daemon.raw_lines())
            if n != lines:
                lines, since = n, time.monotonic()
            return time.monotonic() - since >= quiet_s

        wait_until(quiet, timeout_s, f"the daemon's log to be quiet for {quiet_s:g} s", POLL_S)

    try:
        print(f"layout: groups {layout.groups}, sentinels {sentinels}, "
              f"socket {stack.haproxy_socket}\n")
        cli("status")
        cli("reconcile", "--dry-run")
        daemon.start()
        wait_until(lambda: ready("redis1_master", "redis1a"), 20, "initial apply", POLL_S)
        wait_until(lambda: has("pass", trigger="sentinel_connected"), 10, "settle",
                   POLL_S)
        settle(0.5)  # the connect passes finish logging
        section("start-up")
        cli("status")

        print(f"---- {now()} SIGKILL redis1a (the master of redis1)\n")
        stack.kill_node("redis1a")
        wait_until(lambda: ready("redis1_master", "redis1b"), 40, "failover applied", POLL_S)
        wait_until(lambda: has("pass", trigger="+switch-master")
                   or has("replica_lost"), 20, "failover settled", POLL_S)
        settle(3.0)  # the late events of the failover
        section("redis1a killed: failover")

        print(f"---- {now()} redis1a restarted from its original config (as a master)\n")
        stack.start_node("redis1a")
        wait_until(lambda: ready("redis1_replicas", "redis1a"), 40,
                   "old master back as replica", POLL_S)
        settle(0.5)
        section("redis1a restarted: back as a replica")

        print(f"---- {now()} HAProxy restarted\n")
        stack.restart_haproxy()
        wait_until(lambda: has("haproxy_restarted"), 10, "restart seen", POLL_S)
        wait_until(lambda: ready("redis1_master", "redis1b"), 10, "re-applied", POLL_S)
        settle(0.3)
        section("HAProxy restarted")

        stack.haproxy_command("set server redis2_master/redis2a state maint")
        wait_until(lambda: has("drift_corrected"), 10, "hand edit corrected", POLL_S)
        settle(0.3)
        section("hand edit: set server redis2_master/redis2a state maint")

        print(f"---- {now()} SIGKILL sentinels 1 and 2\n")
        stack.kill_sentinel(1)
        stack.kill_sentinel(2)
        wait_until(lambda: has("undecided"), 10, "undecided", POLL_S)
        settle(0.5)
        section("2 of 3 sentinels killed")
        cli("status")
        stack.start_sentinel(1)
        stack.start_sentinel(2)
        wait_until(lambda: has("decided"), 20, "decided again", POLL_S)
        settle(1.0)
        section("sentinels back")

        # An HAProxy whose admin socket is only `level operator`: every state change refused.
        stack.stop_haproxy()
        wait_until(lambda: has("haproxy_unreachable"), 10, "haproxy down seen", POLL_S)
        cfg = workdir / "haproxy-operator.cfg"
        write_haproxy_config(layout, stack.haproxy_socket, cfg)
        cfg.write_text(cfg.read_text().replace("level admin", "level operator"))
        rogue = start_haproxy(cfg, stack.haproxy_socket, workdir, name="haproxy-operator")
        wait_until(lambda: has("drift_remains"), 15, "refused commands", POLL_S)
        settle(0.3)
        section("HAProxy restarted with `stats socket ... level operator`")
        rogue.stop(grace_s=10)
        rogue = None
        stack.start_haproxy()
        wait_until(lambda: ready("redis1_master", "redis1b"), 15, "re-applied", POLL_S)
        section("admin socket back")

        with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5) as r:
            text = r.read().decode()
        print("==== /metrics (sentinel_haproxy_* only)")
        print("\n".join(ln for ln in text.splitlines() if "sentinel_haproxy_" in ln))
        with urllib.request.urlopen(f"http://{metrics}/healthz", timeout=5) as r:
            print(f"\n==== /healthz: {r.status} {r.read().decode().strip()}")
    except WaitTimeout as e:
        raise SystemExit(str(e)) from None  # a message, not a traceback (everything is stopped)
    finally:
        if rogue is not None:
            rogue.stop(grace_s=10)
        daemon.stop(grace_s=10)
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
