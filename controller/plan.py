"""Desired HAProxy state from Sentinel verdicts, and the ordered commands to get there. Pure.

`targets()` maps each group's `Decision` to its two backends; `plan()` compares targets
with one HAProxy's actual state and returns Runtime API commands, each with its reason:
every `maint` (and session shutdown) first, then every `ready`, so the old master is out
before the new one is in when the batch runs as one exchange. No I/O, no clock.
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

    def wants_ready(self, srv: ServerState) -> tuple[bool, str]:
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
        if srv.matches(d.master):
            if self.read_fallback and not d.replicas and not d.fenced:
                return True, f"master {d.master} serves reads: no healthy replica (fallback)"
            return False, f"is the master {d.master}"
        if any(srv.matches(r) for r in d.replicas):
            return True, f"healthy replica of {d.master}"
        return False, f"not a healthy replica of {d.master}"


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
    outs: list[Command] = []
    ins: list[Command] = []
    notes: list[Note] = []
    # Write backends first: a demoted master must stop taking writes before anything else.
    for t in sorted(wanted, key=lambda t: t.role != "write"):
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
        for srv in servers.values():
            ready, why = t.wants_ready(srv)
            ref = f"{srv.backend}/{srv.name}"
            if ready:
                if srv.admin is not AdminState.READY:
                    ins.append(
                        Command(
                            f"set server {ref} state ready", srv.backend, srv.name, why,
                            srv.admin.value, "ready",
                        )
                    )
                continue
            if srv.admin is not AdminState.MAINT:
                outs.append(
                    Command(
                        f"set server {ref} state maint", srv.backend, srv.name, why,
                        srv.admin.value, "maint",
                    )
                )
            # Writes on an established session to a non-master are lost writes: cut them,
            # also when the server is already in maint (controller restarted, hand edit).
            if t.role == "write" and (srv.admin is not AdminState.MAINT or srv.sessions > 0):
                outs.append(
                    Command(
                        f"shutdown sessions server {ref}", srv.backend, srv.name,
                        f"{why}; close its {srv.sessions} session(s)", "", "sessions-closed",
                    )
                )
    return Plan(tuple(outs + ins), tuple(notes))
