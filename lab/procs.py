"""The one process wrapper of the lab: start a program as a child, signal it and stop it by PID.

`ManagedProcess` runs one program in its own session (a Ctrl-C in the terminal reaches only
the Python parent, which then stops its children in order), with its own working directory and
log file (stdout and stderr appended). Every child still running when the interpreter exits is
stopped by an atexit hook. A program that forks processes of its own (HAProxy's master-worker
mode: a master and its workers, old ones lingering after a reload) is tracked by its process
group, whose id is the PID of the process started here (its own session).
Must not stop anything it did not start (never by name: no pkill/killall), nor detach children
it cannot track.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from controller.haproxy import HAProxyClient, HAProxyError
from lab.wait import WaitTimeout, wait_until

STOP_GRACE_S = 5.0


def find_binary(name: str, fallback: str) -> str:
    return shutil.which(name) or fallback


REDIS_SERVER = find_binary("redis-server", "/usr/bin/redis-server")
HAPROXY = find_binary("haproxy", "/usr/sbin/haproxy")
UNSHARE = find_binary("unshare", "/usr/bin/unshare")  # private /etc/hosts for hostname stacks


class ProcessError(RuntimeError):
    """A child process could not be started, signalled or stopped."""


def group_members(pgid: int) -> list[int]:
    """PIDs of the live processes of process group `pgid` (zombies are dead: left out), from
    /proc."""
    out: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        # `pid (comm) state ppid pgrp ...`: comm may hold spaces and parentheses.
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            out.append(int(entry.name))
    return out


def stop_process(p: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> bool:
    """Stop a child we started, by its PID: SIGTERM (and SIGCONT, a stopped process only acts
    on SIGTERM once resumed), wait up to `grace_s`, then SIGKILL and reap it.
    True if it exited without SIGKILL (or had already exited)."""
    if p.poll() is not None:
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(p.pid, signal.SIGTERM)
        os.kill(p.pid, signal.SIGCONT)
    try:
        p.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)
        p.wait(STOP_GRACE_S)
        return False
    return True


@dataclass(eq=False)
class ManagedProcess:
    """One child program: `argv` run in `cwd`, output appended to `log`."""

    name: str
    argv: list[str]
    cwd: Path
    log: Path
    env: Mapping[str, str] | None = None  # None: inherit this process' environment
    popen: subprocess.Popen[bytes] | None = None
    paused: bool = False
    exit_codes: list[int] = field(default_factory=list)  # of every stop() that stopped it
    #: The program forks processes that stay in its process group (HAProxy -W: its workers):
    #: `kill` signals the whole group, `stop` leaves none of it behind, as a container's end
    #: leaves none of its processes.
    process_group: bool = False
    #: Its group may still have members: set at start, cleared once swept after the leader's
    #: exit (from then on the group's id is free, and may come to name another group).
    _group_open: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None and self.popen.poll() is None else None

    def alive(self) -> bool:
        return self.pid is not None

    def start(self) -> None:
        if self.alive():
            raise ProcessError(f"{self.name} is already running (pid {self.pid})")
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as logf:
            logf.write(f"\n==== lab: starting {' '.join(self.argv)}\n".encode())
            logf.flush()
            self.popen = subprocess.Popen(
                self.argv, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=logf,
                stderr=subprocess.STDOUT, close_fds=True, start_new_session=True,
                env=None if self.env is None else dict(self.env),
            )
        self.paused = False
        self._group_open = self.process_group
        _RUNNING.add(self)

    def send_signal(self, sig: int, group: bool = False) -> None:
        """`sig` to the process by its PID, or with `group` to its whole process group (its
        pgid is its PID: it runs in its own session)."""
        pid = self.pid
        if pid is None:
            raise ProcessError(f"{self.name} is not running")
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
        if sig == signal.SIGSTOP:
            self.paused = True
        elif sig == signal.SIGCONT:
            self.paused = False

    def exited(self) -> int | None:
        """The exit code once it has exited, None while it runs (or was never started)."""
        return None if self.popen is None else self.popen.poll()

    def wait_exit(self, deadline: float) -> bool:
        """Reap the process; True if it exited before `deadline`."""
        if self.popen is None:
            return True
        try:
            self.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill(self, sig: int = signal.SIGKILL, timeout_s: float = 15.0) -> None:
        """Send a deadly `sig` (a crash, a SIGTERM...) and wait until the process is gone
        (with `process_group`: `sig` to the whole group, and wait until all of it is gone)."""
        deadline = time.monotonic() + timeout_s
        self.send_signal(sig, self.process_group)
        if self.paused or sig != signal.SIGKILL:
            with contextlib.suppress(ProcessLookupError, ProcessError):
                self.send_signal(signal.SIGCONT, self.process_group)
        if not self.wait_exit(deadline):
            raise ProcessError(f"{self.name} did not exit within {timeout_s} s of signal {sig}")
        self._sweep_group(deadline)
        _RUNNING.discard(self)

    def stop(self, grace_s: float = STOP_GRACE_S) -> bool:
        """SIGTERM, wait up to `grace_s`, then SIGKILL. Idempotent. True if it stopped
        without SIGKILL (or was not running)."""
        self.send_term()
        return self.finish_stop(time.monotonic() + grace_s)

    def send_term(self) -> None:
        """First half of `stop()`, so that many processes can be stopped in parallel."""
        pid = self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            # Only the leader gets SIGTERM (HAProxy's master stops its workers itself), but
            # every paused member must be resumed to act on it.
            os.kill(pid, signal.SIGTERM)
            if self.process_group:
                os.killpg(pid, signal.SIGCONT)
            else:
                os.kill(pid, signal.SIGCONT)
        self.paused = False

    def finish_stop(self, deadline: float) -> bool:
        p = self.popen
        _RUNNING.discard(self)
        if p is None:
            return True
        was_running = p.returncode is None
        clean = True
        if not self.wait_exit(deadline):
            clean = False
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
            if not self.wait_exit(time.monotonic() + STOP_GRACE_S):
                raise ProcessError(f"{self.name} (pid {p.pid}) survived SIGKILL")
        if was_running and p.returncode is not None:
            self.exit_codes.append(p.returncode)
        return self._sweep_group(time.monotonic() + STOP_GRACE_S) and clean

    def group_pids(self) -> list[int]:
        """Live processes of its process group (with `process_group`, until it was swept; else
        []): the leader, if it runs, and what it forked (after its exit: what it left behind)."""
        if not self._group_open or self.popen is None:
            return []
        return group_members(self.popen.pid)

    def _sweep_group(self, deadline: float) -> bool:
        """With `process_group`, once the leader has exited: SIGKILL what is left of its group
        (an HAProxy worker its master did not stop) and wait until none of it runs (zombies
        are left to their new parent to reap). Once per start. True if nothing was left."""
        left = self.group_pids()
        self._group_open = False
        if not left or self.popen is None:
            return True
        pgid = self.popen.pid
        with contextlib.suppress(ProcessLookupError):  # every member exited meanwhile
            # Safe by group id: the group has live members, so its id (the leader's PID) cannot
            # have been given to another process.
            os.killpg(pgid, signal.SIGKILL)
        try:
            wait_until(lambda: not group_members(pgid), max(0.0, deadline - time.monotonic()),
                       f"every process of {self.name}'s group {pgid} {left} to exit")
        except WaitTimeout as e:
            raise ProcessError(str(e)) from None
        return False

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(no log)"


def start_haproxy(
    config: Path, socket_path: Path, workdir: Path, flags: Sequence[str] = (),
    timeout_s: float = 10.0, name: str = "haproxy",
) -> ManagedProcess:
    """HAProxy in the foreground (`-db`, plus `flags`, e.g. `-W` for master-worker) on
    `config`, started and waited for: its admin socket at `socket_path` answers `show info`
    from this very process (in master-worker mode: from a worker of it)."""
    proc = ManagedProcess(name, [HAPROXY, "-db", *flags, "-f", str(config)], workdir,
                          workdir / f"{name}.log", process_group="-W" in flags)
    proc.start()
    client = HAProxyClient(str(socket_path), 1.0)

    def answers() -> bool:
        code = proc.exited()
        if code is not None:
            raise ProcessError(f"{name} exited with code {code}; log {proc.log}:\n"
                               f"{proc.log_tail()}")
        try:
            pid = client.info().pid
        except HAProxyError:
            return False
        return "-W" in flags or pid == proc.pid

    try:
        wait_until(answers, timeout_s, f"{name} admin socket {socket_path}")
    except BaseException:
        proc.stop()
        raise
    return proc


_RUNNING: set[ManagedProcess] = set()


@atexit.register
def _stop_all() -> None:
    for p in list(_RUNNING):
        with contextlib.suppress(Exception):
            p.stop()
