"""In-memory stand-ins for the loop's two outside systems, for unit tests of whole passes.

`FakeSentinels` answers `head()` and `read()` with the captured views of a chosen state
(tests/data), a slow Sentinel's answer coming later if asked;
`FakeHAProxy` starts from a captured HAProxy state and applies the Runtime API commands the
controller sends, with HAProxy's semantics for them (facts A.1): `set server B/S state
ready|maint|drain` changes the admin state, `shutdown sessions server B/S` drops the session
count, `set server B/S addr IP port P` moves the server and answers as HAProxy 2.6 does
(tests/data/haproxy_set_addr_replies.json), an unknown server answers `No such server.`.
Both satisfy the loop's Protocols (controller.loop.SentinelSource,
controller.haproxy_worker.HAProxyTarget); neither talks to anything.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Collection, Sequence

from captured import GROUP, haproxy_state, views

from controller.haproxy import AppliedAndRead, CommandResult, HAProxyError
from controller.model import (
    Address,
    AdminState,
    Command,
    HAProxyInfo,
    HAProxyState,
    SentinelView,
    normal_ip,
)
from controller.sentinel import Enough, OnLate


class FakeSentinels:
    """Every Sentinel's view in `state` (a captured state name), or what `views` is set to.

    Sentinels in `slow` answer late: a read whose `enough` is satisfied without them returns
    them as pending, and `deliver()` later hands the complete answers to `on_late`, as the
    reader does when their answers come in. A read that cannot decide without them gets
    them at once (the real reader would wait for them)."""

    def __init__(self, state: str = "steady") -> None:
        self.views: list[SentinelView] = views(state)
        self.names: list[str] = [GROUP]  # the groups the Sentinels monitor
        self.slow: set[str] = set()
        self.reads: list[list[str]] = []  # the groups of every read
        self._late: list[tuple[OnLate, list[SentinelView]]] = []

    def show(self, state: str) -> None:
        self.views = views(state)

    @property
    def master_names(self) -> list[str]:
        return list(self.names)

    def discover(self) -> list[Address]:
        return []

    def head(self, skip: Collection[str] = (), patient: bool = False,
             on_late: OnLate | None = None) -> list[SentinelView]:
        return [SentinelView(v.sentinel, error="event connection down") if v.sentinel in skip
                else SentinelView(v.sentinel, error=v.error, tilt=v.tilt, myid=v.myid)
                for v in self.views]

    def read(
        self,
        groups: Sequence[str],
        skip: Collection[str] = (),
        prefill: dict[str, SentinelView] | None = None,
        enough: Enough | None = None,
        on_late: OnLate | None = None,
        discover: bool = False,
    ) -> list[SentinelView]:
        self.reads.append(list(groups))
        answers = [SentinelView(v.sentinel, error="event connection down")
                   if v.sentinel in skip else v for v in self.views]
        got = {v.sentinel: v for v in answers if v.sentinel not in self.slow}
        for sentinel, view in (prefill or {}).items():
            got.setdefault(sentinel, view)
        pending = sum(1 for v in answers if v.sentinel not in got)
        if not pending or enough is None or not enough(list(got.values()), pending):
            return answers
        if on_late is not None:
            self._late.append((on_late, answers))
        return [got.get(v.sentinel) or SentinelView(v.sentinel, error="no answer yet",
                                                    problem="pending") for v in answers]

    def busy(self) -> bool:
        return bool(self._late)

    def poll(self) -> None:
        pass  # late answers come only with deliver()

    def deliver(self) -> None:
        """The slow Sentinels answer: every read cut short gets its complete answers."""
        late, self._late = self._late, []
        for on_late, answers in late:
            on_late(answers)


class FakeHAProxy:
    """One HAProxy's servers in memory; `restart()` brings back the config state."""

    def __init__(self, capture: str = "haproxy_localstack_initial.txt",
                 target: str = "/fake/admin.sock") -> None:
        self.target = target
        self.capture = capture
        self.state_: HAProxyState = haproxy_state(capture)
        self.applied: list[str] = []
        self.reads: list[list[str] | None] = []  # backends of every state read (None: all)
        self.down = False
        self.map_files: list[str] = []  # maps this HAProxy loaded (e.g. a lease.map)
        self.map_entries: dict[tuple[str, str], str] = {}
        self._released = threading.Event()

    def hold(self, max_s: float, on_open: Callable[[], None] | None = None) -> bool:
        """As the client's, in memory: raises while down; else True once this HAProxy
        restarts or goes down, False after `max_s` or `release()` (looks every 10 ms)."""
        if self.down:
            raise HAProxyError(self.target, "cannot talk to the socket: refused")
        self._released.clear()
        if on_open is not None:
            on_open()
        began = self.state_.info
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline and not self._released.is_set():
            if self.down or self.state_.info != began:
                return True
            self._released.wait(0.01)
        return False

    def release(self) -> None:
        self._released.set()

    def restart(self) -> None:
        """A restarted HAProxy: config state again, new Pid and start time."""
        old = self.state_.info
        self.state_ = dataclasses.replace(
            haproxy_state(self.capture),
            info=HAProxyInfo(pid=old.pid + 1, start_time_s=old.start_time_s + 1),
        )

    def set_sessions(self, backend: str, server: str, n: int) -> None:
        srv = self.state_.backends[backend][server]
        self.state_.backends[backend][server] = dataclasses.replace(srv, sessions=n)

    def info(self) -> HAProxyInfo:
        if self.down:
            raise HAProxyError(self.target, "cannot talk to the socket: refused")
        return self.state_.info

    def state(self, backends: Sequence[str] | None = None) -> HAProxyState:
        if self.down:
            raise HAProxyError(self.target, "cannot talk to the socket: refused")
        self.reads.append(None if backends is None else list(backends))
        return HAProxyState(
            info=self.state_.info,
            backends={b: dict(s) for b, s in self.state_.backends.items()
                      if backends is None or b in backends},
        )

    def maps(self) -> list[str]:
        if self.down:
            raise HAProxyError(self.target, "cannot talk to the socket: refused")
        return list(self.map_files)

    def set_map(self, file: str, key: str, value: str) -> None:
        if file not in self.map_files:
            raise HAProxyError(self.target, "refused: Unknown map identifier.")
        self.map_entries[(file, key)] = value

    def run(self, commands: Sequence[Command]) -> list[CommandResult]:
        return [CommandResult(c, self.apply(c.text)) for c in commands]

    def run_and_read(self, commands: Sequence[Command], backends: Sequence[str] | None
                     ) -> AppliedAndRead:
        """As the client's: the commands, then the read (here never in one exchange)."""
        results = self.run(commands)
        try:
            return AppliedAndRead(results, self.state(backends))
        except HAProxyError as e:
            return AppliedAndRead(results, None, str(e))

    def apply(self, text: str) -> str:
        """One command as HAProxy would run it; returns its output ("" on success)."""
        words = text.split()
        self.applied.append(text)
        if words[:2] == ["set", "server"] and len(words) == 7 and words[3] == "addr":
            return self._set_addr(words[2], words[4], int(words[6]))
        if words[:2] == ["set", "server"] and len(words) == 5 and words[3] == "state":
            ref, value = words[2], words[4]
        elif words[:3] == ["shutdown", "sessions", "server"] and len(words) == 4:
            ref, value = words[3], "sessions"
        else:
            return "Unknown command."
        backend, _, name = ref.partition("/")
        srv = self.state_.backends.get(backend, {}).get(name)
        if srv is None:
            return "No such server."
        if value == "sessions":
            srv = dataclasses.replace(srv, sessions=0)
        else:
            srv = dataclasses.replace(srv, admin=AdminState(value))
        self.state_.backends[backend][name] = srv
        return ""

    def _set_addr(self, ref: str, ip: str, port: int) -> str:
        backend, _, name = ref.partition("/")
        srv = self.state_.backends.get(backend, {}).get(name)
        if srv is None:
            return "No such server."
        if normal_ip(ip) is None:
            return f"Invalid addr '{ip}' by 'stats socket command'"
        ip = normal_ip(ip) or ip
        a = "no need to change the addr" if ip == srv.addr else (
            f"IP changed from '{srv.addr}' to '{ip}'")
        p = "no need to change the port" if port == srv.port else (
            f"port changed from '{srv.port}' to '{port}'")
        self.state_.backends[backend][name] = dataclasses.replace(srv, addr=ip, port=port)
        return f"{a}, {p} by 'stats socket command'"


class FakeHAProxyMaster:
    """A master CLI in memory: old worker PID -> (backend, server) -> its sessions there;
    `fail` makes every call raise as an unreachable socket would."""

    def __init__(self, target: str = "/fake/master.sock") -> None:
        self.target = target
        self.old: dict[int, dict[tuple[str, str], int]] = {}
        self.asked: list[tuple[int, frozenset[tuple[str, str]]]] = []
        self.fail = ""

    def old_workers(self) -> list[int]:
        if self.fail:
            raise HAProxyError(self.target, self.fail)
        return list(self.old)

    def close_sessions(self, pid: int, servers: Collection[tuple[str, str]]) -> int:
        if self.fail:
            raise HAProxyError(self.target, self.fail)
        self.asked.append((pid, frozenset(servers)))
        held = self.old.get(pid, {})
        return sum(held.pop(s, 0) for s in set(servers))
