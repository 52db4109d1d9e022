"""HAProxy Runtime API adapter: the only module that talks to an HAProxy socket (the admin
socket, and the master CLI of a master-worker HAProxy).

One short-lived connection per exchange (0.1 ms on a unix socket, facts A.2): a fresh
connection always reaches the current worker after a reload, where a kept one would stay
on the old, stopping worker (facts 0.3). Several commands go in one `;`-joined line, so a
failover is one exchange. Every reply is checked; an error carries its command. `hold` keeps
one idle session open (reopened every second), only to see HAProxy go away the moment it does.
Must not decide anything: it reads state and runs the commands it is given.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from controller.haproxy_parse import (
    STATE_BATCH,
    HAProxyReplyError,
    parse_info,
    parse_maps,
    parse_old_workers,
    parse_sessions,
    parse_state_batch,
    parse_targeted_batch,
    parse_targeted_outputs,
    sendable,
    set_addr_ok,
    split_replies,
    targeted_batch,
)
from controller.model import Address, Command, HAProxyInfo, HAProxyState

_MAX_REPLY_BYTES = 64 * 1024 * 1024  # bound reads: 1,000 groups' `show stat` is ~2 MB
# A single command longer than tune.bufsize (16 kB) resets the connection (facts A.2);
# keep batches well under it so each line is safe on any default build.
_MAX_LINE_BYTES = 12 * 1024


class HAProxyError(Exception):
    """An HAProxy could not be reached, or answered something we cannot use."""

    def __init__(self, target: str, message: str, command: str = "",
                 refused: bool = False) -> None:
        self.target = target
        self.command = command
        self.refused = refused  # HAProxy answered, and said no (as opposed to unreachable)
        # `run` split in several exchanges: the results of those that went through before
        # this one failed (HAProxy ran them: they must be reported all the same).
        self.partial: list[CommandResult] = []
        where = f" (command: {command!r})" if command else ""
        super().__init__(f"haproxy {target}: {message}{where}")


@dataclass(frozen=True)
class CommandResult:
    command: Command
    output: str  # empty on success, except `set server ... addr` (see set_addr_ok)

    @property
    def ok(self) -> bool:
        if self.command.expect == "addr":
            return set_addr_ok(self.output)
        return self.output == ""


@dataclass(frozen=True)
class AppliedAndRead:
    """What `run_and_read` got: the commands' results, and the backends read after them
    (None when that read failed, `read_error` says why; the results stand)."""

    results: list[CommandResult]
    state: HAProxyState | None
    read_error: str = ""


class HAProxyClient:
    """Runtime API client for one HAProxy: a unix socket path or `tcp:HOST:PORT`."""

    def __init__(self, target: str, timeout_s: float = 2.0) -> None:
        self.target = target
        self.timeout_s = timeout_s
        if target.startswith("tcp:"):
            addr = Address.parse(target[4:], "haproxy socket tcp:")
            self._family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
            self._addr: str | tuple[str, int] = (addr.host, addr.port)
        else:
            if not target:
                raise ValueError("haproxy socket: empty path")
            self._family = socket.AF_UNIX
            self._addr = target
        self._held: socket.socket | None = None  # the session `hold` keeps open
        self._release = False  # `release` ended it, not HAProxy

    def exchange(self, line: str) -> str:
        """Send one line, read the reply to EOF (non-interactive mode)."""
        deadline = time.monotonic() + self.timeout_s
        try:
            with socket.socket(self._family, socket.SOCK_STREAM) as s:
                s.settimeout(self.timeout_s)
                s.connect(self._addr)
                s.sendall(line.encode() + b"\n")
                chunks: list[bytes] = []
                size = 0
                while True:
                    s.settimeout(max(0.001, deadline - time.monotonic()))
                    data = s.recv(65536)
                    if not data:
                        break
                    chunks.append(data)
                    size += len(data)
                    if size > _MAX_REPLY_BYTES:
                        raise HAProxyError(self.target, "reply too large", line[:120])
        except TimeoutError:
            raise HAProxyError(
                self.target, f"no complete reply within {self.timeout_s}s", line[:120]
            ) from None
        except OSError as e:
            raise HAProxyError(self.target, f"cannot talk to the socket: {e}", line[:120]) from e
        return b"".join(chunks).decode("utf-8", "replace")

    def hold(self, max_s: float, on_open: Callable[[], None] | None = None) -> bool:
        """Keep one session open, sending nothing, for up to `max_s`: HAProxy closes every
        session as it stops or dies, so its end is seen at once. True when HAProxy ended it
        (stopped, died, or its `stats timeout` ran out), False after `max_s` or `release()`.
        `on_open` runs once it is connected. Raises HAProxyError when it cannot connect.

        The session is closed by us within `max_s`: after a master-worker reload it keeps the
        old worker alive at most that long (facts 0.3).
        """
        try:
            with socket.socket(self._family, socket.SOCK_STREAM) as s:
                s.settimeout(self.timeout_s)
                s.connect(self._addr)
                self._release = False
                self._held = s
                try:
                    if on_open is not None:
                        on_open()
                    s.settimeout(max_s)
                    s.recv(1)  # b"": closed; HAProxy sends nothing unasked
                    released, self._release = self._release, False
                    return not released
                except TimeoutError:
                    return False
                except ConnectionError:  # reset: HAProxy went away
                    return True
                finally:
                    self._held = None
        except OSError as e:
            raise HAProxyError(self.target, f"cannot talk to the socket: {e}") from e

    def release(self) -> None:
        """End a `hold` in progress (from another thread) at once."""
        s = self._held
        if s is not None:
            self._release = True
            with contextlib.suppress(OSError):  # it may have ended meanwhile
                s.shutdown(socket.SHUT_RDWR)

    def info(self) -> HAProxyInfo:
        text = self.exchange("show info")
        try:
            return parse_info(text)
        except HAProxyReplyError as e:
            raise HAProxyError(self.target, str(e), "show info") from None

    def maps(self) -> list[str]:
        """The files of every map HAProxy loaded (`show map`)."""
        text = self.exchange("show map")
        try:
            return [f for _, f in parse_maps(text)]
        except HAProxyReplyError as e:
            raise HAProxyError(self.target, str(e), "show map") from None

    def set_map(self, file: str, key: str, value: str) -> None:
        """Set `key` in map `file` to `value`, adding the entry when it is not there yet."""
        for verb in ("set", "add"):
            cmd = f"{verb} map {file} {key} {value}"
            if ";" in cmd or "\n" in cmd:
                raise HAProxyError(self.target, "map command contains ';' or a newline", cmd)
            out = self.exchange(cmd).strip()
            if not out:
                return
            if verb == "set" and out.startswith("entry not found"):
                continue
            raise HAProxyError(self.target, f"refused: {out}", cmd, refused=True)

    def state(self, backends: Sequence[str] | None = None) -> HAProxyState:
        """Identity, admin states and session counts of every backend (one exchange), or of
        `backends` only (a backend HAProxy lacks is left out; one exchange per ~12 kB of
        commands)."""
        if backends is None:
            return self._read_state(STATE_BATCH, parse_state_batch)
        out: HAProxyState | None = None
        # A name HAProxy cannot have (a group named with a `;`) is a backend it lacks.
        for chunk in _chunks([b for b in backends if sendable(b)]):
            line = targeted_batch(chunk)
            part = self._read_state(line, functools.partial(_parse_targeted, backends=chunk))
            if out is not None and part.info != out.info:
                raise HAProxyError(self.target, "restarted while being read", line[:120])
            out = part if out is None else HAProxyState(out.info, {**out.backends,
                                                                   **part.backends})
        if out is None:
            out = HAProxyState(self.info(), {})
        return out

    def _read_state(self, line: str, parse: Callable[[str], HAProxyState]) -> HAProxyState:
        text = self.exchange(line)
        if "Permission denied" in text:
            raise HAProxyError(self.target, "socket is not at level admin", line[:120])
        try:
            return parse(text)
        except HAProxyReplyError as e:
            raise HAProxyError(self.target, f"bad state reply: {e}", line[:120]) from None

    def run_and_read(self, commands: Sequence[Command], backends: Sequence[str] | None
                     ) -> AppliedAndRead:
        """Run `commands`, then read `backends` (None: every backend) as `state` does.

        One exchange when both fit in one line: HAProxy runs a line's commands in order, so
        the read sees them applied (measured on 2.6: `set server ...; show servers state B`
        shows the new admin state), and a failover's sync costs two exchanges, not three.
        Otherwise `run`, then `state`. Errors of the commands' part as `run`'s; a read that
        fails after them gives `state` None.
        """
        self._check_sendable(commands)
        names = None if backends is None else [b for b in backends if sendable(b)]
        if names and commands:
            read = targeted_batch(names)
            line = "; ".join([*(c.text for c in commands), read])
            if len(line) <= _MAX_LINE_BYTES:
                return self._run_read_line(line, commands, names)
        results = self.run(commands)
        try:
            return AppliedAndRead(results, self.state(backends))
        except HAProxyError as e:
            return AppliedAndRead(results, None, str(e))

    def _run_read_line(self, line: str, commands: Sequence[Command], backends: list[str]
                       ) -> AppliedAndRead:
        results, outputs = self._run_line(line, commands, reads=1 + 2 * len(backends))
        try:
            state = parse_targeted_outputs(outputs, backends)
        except HAProxyReplyError as e:
            err = HAProxyError(self.target, f"bad state reply: {e}", line[:120])
            return AppliedAndRead(results, None, str(err))
        return AppliedAndRead(results, state)

    def run(self, commands: Sequence[Command]) -> list[CommandResult]:
        """Run commands in order, batched `;`-joined; one result per command.

        Nothing is sent when a command cannot be (`;` or a newline in it). Fails
        (HAProxyError) only when an exchange fails; the results of the exchanges before it are
        on the error (`partial`: HAProxy ran those). A refused command is a result with its
        output (HAProxy has no transactions: the rest ran).
        """
        results: list[CommandResult] = []
        batch: list[Command] = []
        size = 0
        self._check_sendable(commands)
        batches: list[list[Command]] = []
        for c in commands:
            if batch and size + len(c.text) + 2 > _MAX_LINE_BYTES:
                batches.append(batch)
                batch, size = [], 0
            batch.append(c)
            size += len(c.text) + 2
        if batch:
            batches.append(batch)
        for b in batches:
            try:
                results.extend(self._run_batch(b))
            except HAProxyError as e:
                e.partial = results
                raise
        return results

    def _check_sendable(self, commands: Sequence[Command]) -> None:
        """Nothing is sent when a command cannot be: a `;` or a newline would split it."""
        for c in commands:
            if ";" in c.text or "\n" in c.text:
                raise HAProxyError(self.target, "command contains ';' or a newline", c.text)

    def _run_batch(self, batch: Sequence[Command]) -> list[CommandResult]:
        return self._run_line("; ".join(c.text for c in batch), batch)[0]

    def _run_line(self, line: str, commands: Sequence[Command], reads: int = 0
                  ) -> tuple[list[CommandResult], list[str]]:
        """One exchange of `line`: `commands`, then `reads` more commands. Returns the
        commands' results and the other outputs as they are; a reply cut short raises (which
        commands ran is then unknown)."""
        text = self.exchange(line)
        try:
            outputs = split_replies(text, len(commands) + reads)
        except HAProxyReplyError as e:
            raise HAProxyError(self.target, str(e), line[:200]) from None
        n = len(commands)
        return ([CommandResult(c, out.strip()) for c, out in zip(commands, outputs[:n],
                                                                  strict=True)], outputs[n:])


class HAProxyMaster:
    """The master CLI of one HAProxy in master-worker mode (`haproxy -W -S PATH`): the workers
    a reload left (old workers: they keep their established sessions, and the admin socket
    reaches only the new worker), and the sessions they keep to given servers, closed one by
    one (an old worker's proxies are stopped: `shutdown sessions server` answers `Proxy is
    disabled.` there, `shutdown session ID` works; measured on 2.6.12)."""

    def __init__(self, target: str, timeout_s: float = 2.0) -> None:
        self.target = target
        self._cli = HAProxyClient(target, timeout_s)

    def _ask(self, line: str) -> str:
        # The master CLI keeps its session open after a command; `quit` ends it. A `@!PID`
        # prefix sends the rest of its line to that worker, so `quit` has a line of its own.
        return self._cli.exchange(f"{line}\nquit")

    def old_workers(self) -> list[int]:
        text = self._ask("show proc")
        try:
            return parse_old_workers(text)
        except HAProxyReplyError as e:
            raise HAProxyError(self.target, str(e), "show proc") from None

    def close_sessions(self, pid: int, servers: Collection[tuple[str, str]]) -> int:
        """Shut every session old worker `pid` keeps to one of `servers` (backend, server);
        how many it had. A session or a worker gone meanwhile is no error."""
        text = self._ask(f"@!{pid} show sess")
        if text.startswith("Can't find the target PID"):
            return 0
        ids = parse_sessions(text, servers)
        per_line = max(1, _MAX_LINE_BYTES // 50)  # "@!PID shutdown session 0x55d0c0de0000; "
        for i in range(0, len(ids), per_line):
            chunk = ids[i:i + per_line]
            # The prefix reaches only to the next `;`: each command carries its own.
            line = "; ".join(f"@!{pid} shutdown session {s}" for s in chunk)
            reply = self._ask(line)
            if reply.startswith("Can't find the target PID"):
                break  # its last session closed: the old worker exited
            try:
                outputs = split_replies(reply, len(chunk))
            except HAProxyReplyError as e:
                raise HAProxyError(self.target, str(e), line[:120]) from None
            refused = [o.strip() for o in outputs
                       if o.strip() and not o.strip().startswith("No such session")]
            if refused:
                raise HAProxyError(self.target, f"refused: {refused[0]}", line[:120],
                                   refused=True)
        return len(ids)


def _parse_targeted(text: str, backends: list[str]) -> HAProxyState:
    return parse_targeted_batch(text, backends)


def _chunks(backends: list[str]) -> list[list[str]]:
    """Backends in groups whose `targeted_batch` line stays under _MAX_LINE_BYTES."""
    out: list[list[str]] = []
    size = _MAX_LINE_BYTES
    for b in backends:
        cost = 2 * len(b) + 40  # "; show servers state B; show stat B 4 -1"
        if size + cost > _MAX_LINE_BYTES:
            out.append([])
            size = len("show info")
        out[-1].append(b)
        size += cost
    return out
