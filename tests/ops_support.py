"""Small helpers for the operations tests (auth, metrics, webhooks): the controller as a real
subprocess with JSON logs, one-shot CLI runs, bounded waits and a free loopback port.

Every wait polls a condition until a deadline; processes are stopped by the PID we started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from controller.localstack import LocalStack

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parent.parent


def wait_for(
    cond: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.05
) -> T:
    """Poll `cond` until it returns something truthy (returned); AssertionError naming `what`."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        try:
            value = cond()
            if value:
                return value
        except (OSError, ValueError, KeyError) as e:
            last = f" (last error: {e!r})"
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{last}")
        time.sleep(interval_s)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process' environment without any SENTINEL_HAPROXY_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_HAPROXY_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def target_args(stack: LocalStack) -> list[str]:
    sentinels = ",".join(f"{h}:{p}" for h, p in stack.sentinel_addrs)
    return ["--sentinel", sentinels, "--haproxy-socket", str(stack.haproxy_socket)]


def cli(stack: LocalStack, *args: str, env: Mapping[str, str] | None = None,
        timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m controller <args> --sentinel ... --haproxy-socket ...`, output captured."""
    argv = [sys.executable, "-m", "controller", *args, *target_args(stack)]
    return subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout_s, env=clean_env(env), check=False)


class Daemon:
    """`python -m controller run` against a stack; stdout+stderr (JSON lines) in `log_path`."""

    def __init__(self, stack: LocalStack, log_path: Path, *extra_args: str,
                 env: Mapping[str, str] | None = None, resync_interval_s: float = 1.0) -> None:
        self.log_path = log_path
        self.argv = [sys.executable, "-m", "controller", "run", "--log-format", "json",
                     "--resync-interval-s", str(resync_interval_s), *target_args(stack),
                     *extra_args]
        self.env = clean_env(env)
        self.popen: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    def __enter__(self) -> Daemon:
        with open(self.log_path, "ab") as logf:
            self.popen = subprocess.Popen(self.argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                                          stdout=logf, stderr=logf, env=self.env,
                                          start_new_session=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout_s: float = 10) -> int | None:
        """SIGTERM by PID, bounded wait, SIGKILL if it had to (then the exit code is not 0)."""
        p = self.popen
        if p is None or p.poll() is not None:
            return None if p is None else p.returncode
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGTERM)
        try:
            self.returncode = p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
            p.wait(10)
            self.returncode = -9
        return self.returncode

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.text().split("\n")[:-1]:  # the last part may be half written
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    out.append(obj)
        return out

    def events(self, event: str, **match: object) -> list[dict[str, Any]]:
        return [ln for ln in self.lines() if ln.get("event") == event
                and all(ln.get(k) == v for k, v in match.items())]

    def wait_event(self, event: str, timeout_s: float = 20, **match: object) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            if not self.alive():
                raise AssertionError(f"controller exited; log:\n{self.tail()}")
            hits = self.events(event, **match)
            return hits[0] if hits else None

        try:
            return wait_for(found, timeout_s, f"log event {event} {match}")
        except AssertionError as e:
            raise AssertionError(f"{e}\nlog tail:\n{self.tail()}") from None

    def tail(self, n: int = 30) -> str:
        return "\n".join(line[:400] for line in self.text().splitlines()[-n:])

    def problems(self) -> list[str]:
        """What must never be in the log: unexpected_error, tracebacks."""
        return [line[:1000] for line in self.text().splitlines()
                if '"unexpected_error"' in line or "Traceback" in line]


def haproxy_states(stack: LocalStack) -> dict[tuple[str, str], int]:
    """(backend, server) -> srv_admin_state bits from `show servers state`."""
    out = {}
    for line in stack.haproxy_command("show servers state").splitlines()[2:]:
        cols = line.split()
        if len(cols) > 6:
            out[(cols[1], cols[3])] = int(cols[6])
    return out


def ready(stack: LocalStack, backend: str, server: str) -> bool:
    """Routable: no maint/drain admin bit (0x04 alone = config-disabled, then set ready)."""
    return haproxy_states(stack).get((backend, server), 1) & ~0x04 == 0


def run_healthcheck(address: str) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command against a metrics address."""
    return subprocess.run([sys.executable, "-m", "controller.healthcheck"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=30, check=False,
                          env=clean_env({"SENTINEL_HAPROXY_METRICS_ADDRESS": address}))


__all__: Sequence[str] = (
    "Daemon", "clean_env", "cli", "free_port", "haproxy_states", "ready", "run_healthcheck",
    "target_args", "wait_for",
)
