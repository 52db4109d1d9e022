"""Closes the sessions an HAProxy's old workers keep to servers the controller took out.

After a master-worker reload, the old worker keeps its established client sessions until they
end: hours, with pooled Redis clients. The admin socket reaches only the new worker, so a
fence's `shutdown sessions server` never reaches those sessions, and a write session held
there to a demoted master would keep writing to it. Through HAProxy's master CLI (`haproxy -W
-S PATH`, setting `haproxy_master_socket`) each old worker is asked for its sessions, and those
to the servers whose sessions the worker just shut on the current worker are shut too. The
HAProxy worker hands them over right after applying such commands (a fence, a slot moved).
Without a master CLI HAProxy's `hard-stop-after` is the only bound (docs/operations.md).
Must not decide anything: it closes the sessions of the servers it is given, and nothing else.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection
from typing import Protocol

import structlog

from controller.haproxy import HAProxyError

log = structlog.get_logger("controller")

IDLE_S = 1.0  # the thread looks for work at least this often
RETRY_MIN_S = 0.05  # a sweep that failed is tried again after this, then twice as long...
RETRY_MAX_S = 1.0  # ...up to this


class HAProxyMasterTarget(Protocol):
    """What `OldWorkers` needs from an HAProxy's master CLI (`haproxy.HAProxyMaster`);
    errors: HAProxyError."""

    target: str

    def old_workers(self) -> list[int]: ...

    def close_sessions(self, pid: int, servers: Collection[tuple[str, str]]) -> int: ...


class OldWorkers:
    """One HAProxy's old workers, reached through its master CLI. The worker's thread hands
    servers over (`request`) and a thread of this one (`run`) closes their sessions: a master
    CLI that is slow (the master re-executes itself on a reload) or hung never holds a sync
    back. Inline (the command line, tests), `close` directly."""

    def __init__(self, master: HAProxyMasterTarget, haproxy: str) -> None:
        self.master = master
        self.haproxy = haproxy  # the admin socket, as log lines name the HAProxy
        self._error = ""  # the last failure, logged once until it changes or clears
        self._lock = threading.Lock()
        self._due: dict[tuple[str, str], str] = {}  # server -> reason (guarded by _lock)
        self._wake = threading.Event()

    def request(self, servers: Collection[tuple[str, str]], reason: str) -> None:
        """Close these servers' old-worker sessions soon, in `run`'s thread."""
        with self._lock:
            for srv in servers:
                self._due.setdefault(srv, reason)
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Close what `request` handed over, until `stop` is set (then `wake()`). A sweep
        that could not ask every old worker is tried again, RETRY_MIN_S, then twice as long
        each time up to RETRY_MAX_S: right after a reload the master re-executes itself and
        refuses connections for a moment, exactly when a fence may come."""
        backoff = RETRY_MIN_S
        wait_s = IDLE_S
        while not stop.is_set():
            self._wake.wait(wait_s)
            self._wake.clear()
            with self._lock:
                due, self._due = self._due, {}
            if not due or stop.is_set():
                wait_s = IDLE_S
                continue
            try:
                _, ok = self._sweep(set(due), next(iter(due.values())))
            except Exception:  # a bug: say so and go on; never spin on it
                log.exception("unexpected_error", where="haproxy old workers",
                              haproxy=self.haproxy)
                ok = False
            if ok:
                backoff, wait_s = RETRY_MIN_S, IDLE_S
                continue
            with self._lock:  # again later, with what came meanwhile
                for srv, why in due.items():
                    self._due.setdefault(srv, why)
            wait_s, backoff = backoff, min(backoff * 2, RETRY_MAX_S)

    def wake(self) -> None:
        self._wake.set()

    def close(self, servers: Collection[tuple[str, str]], reason: str) -> int:
        """Shut the sessions every old worker keeps to `servers` (backend, server); how many
        there were. A failure is logged (once while it lasts), never raised: the current
        worker's commands are done already."""
        return self._sweep(servers, reason)[0]

    def _sweep(self, servers: Collection[tuple[str, str]], reason: str) -> tuple[int, bool]:
        """`close`, and whether every old worker was asked (or there is no master CLI at
        all, where asking again would not help)."""
        try:
            pids = self.master.old_workers()
        except HAProxyError as e:
            return 0, self._failed(str(e), servers)
        closed = 0
        error = ""
        for pid in pids:
            try:
                n = self.master.close_sessions(pid, servers)
            except HAProxyError as e:
                error = str(e)
                continue
            if n:
                log.warning("old_worker_sessions_closed", haproxy=self.haproxy, pid=pid,
                            sessions=n, servers=sorted(f"{b}/{s}" for b, s in servers),
                            reason=reason)
            closed += n
        if error:
            return closed, self._failed(error, servers)
        self._error = ""
        return closed, True

    def _failed(self, error: str, servers: Collection[tuple[str, str]]) -> bool:
        """Log a failure once while it lasts; True when there is no master CLI at all."""
        target = self.master.target
        absent = not target.startswith("tcp:") and not os.path.exists(target)
        if error == self._error:
            return absent
        if absent:
            # No master CLI there (HAProxy runs without `-S`): nothing is wrong now, but the
            # operator should know what a reload leaves out of reach.
            log.info("old_workers_unchecked", haproxy=self.haproxy, master_socket=target,
                     detail="no master CLI at this path (haproxy -W -S PATH): after a reload, "
                     "sessions the old worker keeps to a fenced server are not closed; "
                     "hard-stop-after bounds them")
        else:
            log.warning("old_workers_unreachable", haproxy=self.haproxy,
                        master_socket=target, error=error,
                        servers=sorted(f"{b}/{s}" for b, s in servers),
                        detail="sessions a worker left by a reload keeps to these servers "
                        "stay open until asked again (with backoff) or hard-stop-after ends "
                        "that worker")
        self._error = error
        return absent
