"""Run the controller daemon (`python -m controller run`) as a child process, for the tools.

`demo` and `drill --compare` use it so that what they show is the real daemon with its own
log. It starts the process in its own session with JSON logs to a file, waits until HAProxy
follows Sentinel, reads the log lines back, and stops the process by its PID (SIGTERM, bounded
wait, SIGKILL). Must not stop anything it did not start.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from controller.haproxy import HAProxyClient, HAProxyError
from controller.localstack import stop_process
from controller.model import AdminState
from controller.probes import Mark


class SidecarError(RuntimeError):
    pass


class ControllerProcess:
    def __init__(
        self,
        sentinels: Sequence[str],
        haproxy_sockets: Sequence[str],
        workdir: Path,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.sentinels = list(sentinels)
        self.haproxy_sockets = list(haproxy_sockets)
        self.workdir = Path(workdir)
        self.log_path = self.workdir / "controller.log"
        self.extra_args = list(extra_args)
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None and self.popen.poll() is None else None

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "controller", "run",
                "--sentinel", ",".join(self.sentinels), "--log-format", "json",
                "--log-level", "info"]
        for s in self.haproxy_sockets:
            argv += ["--haproxy-socket", s]
        return argv + self.extra_args

    def start(self) -> None:
        if self.pid is not None:
            raise SidecarError(f"controller already running (pid {self.pid})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_HAPROXY_")}
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv(), cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, env=env,
            )

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM by PID, wait up to `grace_s`, then SIGKILL. Idempotent."""
        if self.popen is not None:
            stop_process(self.popen, grace_s)

    def lines(self) -> list[dict[str, Any]]:
        """Every JSON log line so far (other lines are skipped)."""
        out: list[dict[str, Any]] = []
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return out
        for line in text.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def wait_in_sync(self, groups: Sequence[str], timeout_s: float = 15.0) -> None:
        """Until every group's write backend has exactly one routable server on each HAProxy."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise SidecarError(
                    f"controller exited with code {self.popen.returncode}; log "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            try:
                if all(one_writer(s, groups) for s in self.haproxy_sockets):
                    return
            except HAProxyError as e:
                last = str(e)
            time.sleep(0.05)
        raise SidecarError(
            f"HAProxy did not follow Sentinel within {timeout_s} s ({last}); controller log "
            f"{self.log_path}:\n{self.log_tail()}"
        )


def one_writer(socket_path: str, groups: Sequence[str]) -> bool:
    state = HAProxyClient(socket_path, 1.0).state()
    for g in groups:
        servers = state.backends.get(f"{g}_master", {})
        ready = [s for s in servers.values() if s.admin is AdminState.READY]
        if len(ready) != 1:
            return False
    return True


def ts_of(line: dict[str, Any]) -> float | None:
    """Wall-clock seconds of a structlog JSON line's `ts` (ISO, UTC)."""
    ts = line.get("ts")
    if not isinstance(ts, str):
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def controller_marks(lines: Sequence[dict[str, Any]], since: float, until: float) -> list[Mark]:
    """The controller's actions (`master_changed`, `server_state_changed`) as Marks."""
    out: list[Mark] = []
    for ln in lines:
        t = ts_of(ln)
        if t is None or not since <= t <= until:
            continue
        ev = ln.get("event")
        if ev == "server_state_changed":
            text = (f"set {ln.get('backend')}/{ln.get('server')} {ln.get('to')}  "
                    f"({ln.get('reason')}; {ln.get('latency_ms')} ms after the hint)")
        elif ev == "master_changed":
            text = f"master_changed {ln.get('group')} {ln.get('from')} -> {ln.get('to')}"
        elif ev in ("undecided", "master_fenced", "command_failed", "unexpected_error"):
            text = f"{ev} {ln.get('group', '')} {ln.get('reason', '')}".strip()
        else:
            continue
        out.append(Mark(t, "controller", "controller", text))
    return out
