"""The controller daemon (`python -m controller run`) as a child process of the lab.

The demo, `drill --compare`, the integration tests and the benchmarks run the real daemon this
way, with JSON logs to its own file: start, stop by PID (SIGTERM, bounded wait, SIGKILL), crash
it (SIGKILL), read its log lines back, wait for one, and list what must never be in it
(`unexpected_error`, a traceback, an unclean stop).
Must not stop anything it did not start.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Self

from controller.haproxy import HAProxyClient, HAProxyError
from controller.settings import Settings
from lab.probes import Mark
from lab.procs import ManagedProcess, ProcessError
from lab.wait import wait_until


class ControllerDaemon:
    """`python -m controller run` against `sentinels` and `haproxy_sockets`, logging JSON to
    `log_path`. `start()`/`stop()` may be called repeatedly (a restart appends to the log)."""

    def __init__(
        self,
        sentinels: Sequence[str],
        haproxy_sockets: Sequence[str],
        log_path: Path,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        resync_interval_s: float | None = None,
        metrics_address: str | None = None,
    ) -> None:
        self.sentinels = list(sentinels)
        self.haproxy_sockets = list(haproxy_sockets)
        self.log_path = Path(log_path)
        self.extra_args = list(extra_args)
        self.metrics_address = metrics_address
        argv = [sys.executable, "-m", "controller", "run", "--log-format", "json",
                "--sentinel", ",".join(self.sentinels)]
        for s in self.haproxy_sockets:
            argv += ["--haproxy-socket", s]
        if resync_interval_s is not None:
            argv += ["--resync-interval-s", str(resync_interval_s)]
        if metrics_address:
            argv += ["--metrics-address", metrics_address]
        self.proc = ManagedProcess("controller", [*argv, *self.extra_args],
                                   self.log_path.parent, self.log_path, clean_env(env))
        self.stop_problems: list[str] = []

    # -- process ---------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.alive()

    def argv(self) -> list[str]:
        return list(self.proc.argv)

    def start(self) -> None:
        self.proc.start()

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM, wait up to `grace_s`, then SIGKILL; records a problem if it had to, or if
        the daemon exited non-zero. Returns the exit code (None if it was not running)."""
        pid = self.proc.pid
        if pid is None:
            return None
        codes = len(self.proc.exit_codes)
        if not self.proc.stop(grace_s):
            self.stop_problems.append(f"controller pid {pid} did not exit within {grace_s} s "
                                      "of SIGTERM")
        rc = self.proc.exit_codes[-1] if len(self.proc.exit_codes) > codes else None
        if rc not in (0, None):
            self.stop_problems.append(f"controller pid {pid} exited with code {rc} on SIGTERM")
        return rc

    def kill(self) -> None:
        """SIGKILL (a crash): no problem recorded."""
        if self.proc.alive():
            self.proc.kill(signal.SIGKILL, 10.0)

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def returncode(self) -> int | None:
        """Exit code of the last stop() that stopped it (None before)."""
        return self.proc.exit_codes[-1] if self.proc.exit_codes else None

    # -- the log ---------------------------------------------------------------------
    def text(self) -> str:
        """The whole log so far ("" before the first start)."""
        return self.proc.log_text()

    def raw_lines(self) -> list[str]:
        """Complete lines written so far (a line still being written is left out)."""
        return self.proc.log_text().split("\n")[:-1]

    def lines(self) -> list[dict[str, Any]]:
        """Every JSON log line so far (other lines are skipped; see `problems`)."""
        out = []
        for line in self.raw_lines():
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    out.append(obj)
        return out

    def mark(self) -> int:
        """A position in the log: pass it as `since` to look only at later lines."""
        return len(self.lines())

    def events(self, event: str, since: int = 0, **match: object) -> list[dict[str, Any]]:
        """Log lines with `event` and every `match` field equal, after `since`."""
        return [
            ln for ln in self.lines()[since:]
            if ln.get("event") == event and all(ln.get(k) == v for k, v in match.items())
        ]

    def wait_event(
        self, event: str, timeout_s: float = 20.0, since: int = 0, **match: object
    ) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            if not self.alive():
                raise AssertionError(f"controller exited; log tail:\n{self.tail()}")
            hits = self.events(event, since, **match)
            return hits[0] if hits else None

        return wait_until(found, timeout_s, f"controller log event {event!r} with {match}",
                          context=lambda: "controller log tail:\n" + self.tail())

    def tail(self, n: int = 25) -> str:
        return "\n".join(line[:400] for line in self.raw_lines()[-n:])

    def problems(self) -> list[str]:
        """What must never happen: `unexpected_error` lines, tracebacks, unclean stops."""
        out = list(self.stop_problems)
        for line in self.raw_lines():
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            if isinstance(obj, dict) and obj.get("event") == "unexpected_error":
                out.append(f"unexpected_error logged: {line[:2000]}")
            elif "Traceback" in line or "Exception in thread" in line:
                out.append(f"traceback in controller output: {line[:2000]}")
        return out

    def marks(self, since: float, until: float) -> list[Mark]:
        """The daemon's actions between two wall-clock times, as timeline marks."""
        return controller_marks(self.lines(), since, until)

    # -- HAProxy following Sentinel ----------------------------------------------------
    def wait_in_sync(self, groups: Sequence[str], timeout_s: float = 15.0) -> None:
        """Until every group's write backend has exactly one routable server on each HAProxy,
        and each takes new writes (its lease given)."""

        def in_sync() -> bool:
            if not self.alive():
                raise ProcessError(f"controller exited; log {self.log_path}:\n{self.tail()}")
            try:
                return all(one_writer(s, groups) and lease_given(s)
                           for s in self.haproxy_sockets)
            except HAProxyError:
                return False

        wait_until(in_sync, timeout_s, "HAProxy to follow Sentinel (one writer per group, "
                   "the write lease given)",
                   context=lambda: f"controller log {self.log_path}:\n{self.tail()}")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process' environment without any SENTINEL_HAPROXY_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_HAPROXY_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def one_writer(socket_path: str, groups: Sequence[str]) -> bool:
    """Each group's write backend (named by the default template) has one routable server."""
    state = HAProxyClient(socket_path, 1.0).state()
    template = Settings().write_backend
    for g in groups:
        servers = state.backends.get(template.format(master=g), {})
        if sum(1 for s in servers.values() if s.routable) != 1:
            return False
    return True


def lease_given(socket_path: str) -> bool:
    """HAProxy's write lease (its `lease.map`) is in the future, or its config has none: it
    takes new write connections. The controller gives it only after syncing every group (at
    its start, after an HAProxy restart): a moment after the servers are set."""
    client = HAProxyClient(socket_path, 1.0)
    files = [f for f in client.maps() if f.rsplit("/", 1)[-1] == "lease.map"]
    if not files:
        return True
    for line in client.exchange(f"show map {files[0]}").splitlines():
        words = line.split()  # "<ref> lease <epoch ms>"
        if len(words) == 3 and words[1] == "lease" and words[2].isdigit():
            return int(words[2]) > time.time() * 1000
    return False


def ts_of(line: Mapping[str, Any]) -> float | None:
    """Wall-clock seconds of a structlog JSON line's `ts` (ISO, UTC)."""
    ts = line.get("ts")
    if not isinstance(ts, str):
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def controller_marks(
    lines: Sequence[Mapping[str, Any]], since: float, until: float
) -> list[Mark]:
    """The controller's actions (`master_changed`, `server_state_changed`...) as Marks."""
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
