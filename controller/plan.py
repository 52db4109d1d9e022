"""Desired HAProxy state from Sentinel verdicts, and the ordered commands to get there. Pure.

`targets()` maps each group's `Decision` to its two backends; `plan()` compares targets
with one HAProxy's actual state and returns Runtime API commands, each with its reason:
every `maint` (and session shutdown) first, then every `ready`, so the old master is out
before the new one is in when the batch runs as one exchange. No I/O, no clock.

Write backend: exactly the master is ready. Read backend: the replicas that serve reads are
ready; the read fallback (the master, see decide) is ready as the backend's `backup` server
for it when the config has one (HAProxy then falls back by itself the moment the replicas
are down, before Sentinel notices), or else as a normal server while no replica serves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from controller.model import AdminState, Command, Decision, HAProxyState, ServerState

Role = Literal["write", "read"]


@dataclass(frozen=True)
class BackendTarget:
    """The servers that should be ready in one backend, and why."""

    group: str
    backend: str
    role: Role
    decision: Decision
    read_fallback: bool = False  # read backend: the master serves reads when no replica can

    def wants_ready(
        self, srv: ServerState, peers: Iterable[ServerState] = ()
    ) -> tuple[bool, str]:
        """Should `srv` be ready, and why; `peers` are the backend's other servers."""
        d = self.decision
        assert d.master is not None  # targets() only builds targets for decided groups
        if srv.addr == "-":  # unresolved: `ready` would route to no address (facts A.1.1)
            return False, "server has no address"
        if self.role == "write":
            if d.fenced:
                return False, d.reason
            if srv.matches(d.master):
                return True, f"elected master {d.master} ({d.reason})"
            return False, f"not the master (master is {d.master}, epoch {d.epoch})"
        fallback = d.fallback if self.read_fallback else None
        if srv.backup:
            if fallback is not None and srv.matches(fallback):
                return True, f"read fallback {fallback}, used by HAProxy while no replica is up"
            return False, "not the read fallback"
        if any(srv.matches(r) for r in d.replicas):
            return True, f"serves reads: replica of {d.master}"
        if fallback is not None and srv.matches(fallback) and not d.replicas and not any(
            p.backup and p.matches(fallback) for p in peers
        ):
            return True, f"{fallback} serves reads: no replica can (fallback)"
        if srv.matches(d.master):
            return False, f"is the master {d.master}"
        return False, f"does not serve reads for {d.master}"


@dataclass(frozen=True)
class Note:
    """Something the plan could not do or wants an operator to know; logged, never fatal."""

    event: str  # backend_missing, master_not_in_backend, undecided
    group: str
    detail: str
    backend: str = ""


@dataclass(frozen=True)
class Plan:
    commands: tuple[Command, ...] = ()
    notes: tuple[Note, ...] = field(default=())

    @property
    def drift(self) -> int:
        """State changes needed (session shutdowns on already-out servers included)."""
        return len(self.commands)


def targets(
    decisions: Iterable[Decision],
    write_template: str,
    read_template: str,
    read_fallback: bool = False,
) -> tuple[list[BackendTarget], list[Note]]:
    out: list[BackendTarget] = []
    notes: list[Note] = []
    for d in decisions:
        if d.master is None:
            notes.append(Note("undecided", d.name, d.reason))
            continue
        out.append(BackendTarget(d.name, write_template.format(master=d.name), "write", d))
        out.append(
            BackendTarget(d.name, read_template.format(master=d.name), "read", d, read_fallback)
        )
    return out, notes


def plan(wanted: Sequence[BackendTarget], actual: HAProxyState) -> Plan:
    """Commands in this order: write backends' outs (maint, sessions shut), their ins (ready):
    a demoted master stops taking writes before the new one is in; then read backends' ins
    before their outs, so that a read backend is never empty in between."""
    write_outs: list[Command] = []
    write_ins: list[Command] = []
    read_ins: list[Command] = []
    read_outs: list[Command] = []
    notes: list[Note] = []
    for t in wanted:
        servers = actual.backends.get(t.backend)
        if servers is None:
            notes.append(Note("backend_missing", t.group, f"no backend {t.backend!r}", t.backend))
            continue
        d = t.decision
        assert d.master is not None
        if t.role == "write" and not d.fenced and not any(
            s.matches(d.master) and s.addr != "-" for s in servers.values()
        ):
            notes.append(
                Note(
                    "master_not_in_backend",
                    t.group,
                    f"no server of {t.backend!r} has address {d.master}; writes refused",
                    t.backend,
                )
            )
        outs, ins = (write_outs, write_ins) if t.role == "write" else (read_outs, read_ins)
        # One writer, even when two servers have the master's address: the one already ready.
        able = [s for s in servers.values() if t.role == "write" and t.wants_ready(s)[0]]
        writer = next((s for s in able if s.admin is AdminState.READY), able[0] if able else None)
        for srv in servers.values():
            ready, why = t.wants_ready(srv, servers.values())
            if ready and t.role == "write" and writer is not None and srv is not writer:
                ready, why = False, f"{writer.backend}/{writer.name} is the master {d.master}"
            ref = f"{srv.backend}/{srv.name}"
            if ready:
                if srv.admin is not AdminState.READY:
                    ins.append(Command(f"set server {ref} state ready", srv.backend, srv.name,
                                       why, srv.admin.value, "ready"))
                continue
            if srv.admin is not AdminState.MAINT:
                outs.append(Command(f"set server {ref} state maint", srv.backend, srv.name, why,
                                    srv.admin.value, "maint"))
            # Writes on an established session to a non-master are lost writes: cut them, also
            # when the server is already in maint (controller restarted, hand edit). Reads are
            # never cut: a connection to a node that left the read side (promoted, or stale)
            # reads at worst stale data, as with any replica.
            if t.role == "write" and (srv.admin is not AdminState.MAINT or srv.sessions > 0):
                outs.append(Command(f"shutdown sessions server {ref}", srv.backend, srv.name,
                                    f"{why}; close its {srv.sessions} session(s)", "",
                                    "sessions-closed"))
    return Plan(tuple(write_outs + write_ins + read_ins + read_outs), tuple(notes))
