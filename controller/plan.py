"""Desired HAProxy state from Sentinel verdicts, and the ordered commands to get there. Pure.

`targets()` maps each group's `Decision` to its two backends; `plan()` compares targets
with one HAProxy's actual state and returns Runtime API commands, each with its reason:
every `maint` (and session shutdown) first, then every `ready`, so the old master is out
before the new one is in when the batch runs as one exchange. No I/O, no clock.

Write backend: exactly the master is ready. Read backend: the replicas that serve reads are
ready; the read fallback (the master, see decide) is ready as the backend's `backup` server
for it when the config has one (HAProxy then falls back by itself the moment the replicas
are down, before Sentinel notices), or else as a normal server while no replica serves.

Servers are matched to nodes by address. In slot-based backends (`server-template`, see
controller.slots) every node of the group first gets a slot: re-addressing a slot (`maint`,
`shutdown sessions`, `set server B/S addr IP port P`) comes after the write backends' outs
and before any `ready`, so a slot only takes a node once it is out and empty.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from controller import slots
from controller.model import Address, AdminState, Command, Decision, HAProxyState, ServerState

Role = Literal["write", "read"]


@dataclass(frozen=True)
class BackendTarget:
    """The servers that should be ready in one backend, and why."""

    group: str
    backend: str
    role: Role
    decision: Decision
    read_fallback: bool = False  # read backend: the master serves reads when no replica can
    slot_prefix: str = "slot"  # servers named `<prefix><n>`, `<prefix>-fallback<n>` are slots

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
            if d.promoting is not None and srv.matches(d.promoting):  # decide keeps it
                return True, "serves reads through its promotion, until a replica follows it"
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

    event: str  # backend_missing, master_not_in_backend, undecided, slots_exhausted...
    group: str
    detail: str
    backend: str = ""
    count: int = 0  # slots_exhausted: nodes without a slot (a metric)


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
    slot_prefix: str = "slot",
) -> tuple[list[BackendTarget], list[Note]]:
    out: list[BackendTarget] = []
    notes: list[Note] = []
    for d in decisions:
        if d.master is None:
            notes.append(Note("undecided", d.name, d.reason))
            continue
        out.append(BackendTarget(d.name, write_template.format(master=d.name), "write", d,
                                 slot_prefix=slot_prefix))
        out.append(BackendTarget(d.name, read_template.format(master=d.name), "read", d,
                                 read_fallback, slot_prefix))
    return out, notes


def plan(wanted: Sequence[BackendTarget], actual: HAProxyState) -> Plan:
    """Commands in this order: write backends' outs (maint, sessions shut), their ins (ready):
    a demoted master stops taking writes before the new one is in; then read backends' ins
    before their outs, so that a read backend is never empty in between."""
    write_outs: list[Command] = []
    moves: list[Command] = []
    write_ins: list[Command] = []
    read_ins: list[Command] = []
    read_outs: list[Command] = []
    notes: list[Note] = []
    for t in wanted:
        actual_servers = actual.backends.get(t.backend)
        if actual_servers is None:
            notes.append(Note(
                "backend_missing", t.group,
                f"no backend {t.backend!r}: `sentinel-haproxy config --master {t.group} "
                "--sections-only` prints the lines to add", t.backend))
            continue
        d = t.decision
        assert d.master is not None
        servers, free, slot_cmds, slot_notes = _slots(t, actual_servers)
        moves += slot_cmds
        notes += slot_notes
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
        able = [s for s in servers.values()
                if t.role == "write" and s.name not in free and t.wants_ready(s)[0]]
        writer = next((s for s in able if s.admin is AdminState.READY), able[0] if able else None)
        for srv in servers.values():
            if srv.name in free:
                ready, why = False, "free slot: no node of the group on it"
            else:
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
    return Plan(tuple(write_outs + moves + write_ins + read_ins + read_outs), tuple(notes))


def _slots(
    t: BackendTarget, servers: dict[str, ServerState]
) -> tuple[dict[str, ServerState], set[str], list[Command], list[Note]]:
    """Assign the backend's slots (controller.slots): the servers as they will be once the
    slots are re-addressed, the free slots, the commands that re-address them, and notes."""
    slot_servers = [s for s in servers.values() if slots.is_slot(s.name, t.slot_prefix)]
    if not slot_servers:
        return servers, set(), [], []
    d = t.decision
    assert d.master is not None
    fixed = [s for s in servers.values() if not slots.is_slot(s.name, t.slot_prefix)]

    def uncovered(nodes: list[Address]) -> list[Address]:
        return [n for n in nodes if not any(f.matches(n) and f.addr != "-" for f in fixed)]

    others = sorted((d.nodes | d.replicas) - {d.master})
    fallback = d.fallback if t.read_fallback else None
    if t.role == "write":
        sets = [([s for s in slot_servers], uncovered([d.master, *others]), {d.master})]
    else:
        readers = sorted(d.replicas)  # the master too, through its promotion (decide)
        rest = [n for n in [d.master, *others] if n not in d.replicas]
        sets = [([s for s in slot_servers if not s.backup],
                 uncovered([*readers, *rest]), set(readers)),
                ([s for s in slot_servers if s.backup],
                 uncovered([fallback] if fallback is not None else []),
                 {fallback} if fallback is not None else set())]
    view = dict(servers)
    free: set[str] = set()
    cmds: list[Command] = []
    notes: list[Note] = []
    for members, nodes, hot in sets:
        if not members:
            continue
        sp = slots.assign(members, nodes, hot, t.slot_prefix)
        free |= {s.name for s in members if s.name not in sp.holds}
        for m in sp.moves:
            cmds += _readdress(m.slot, m.node)
            view[m.slot.name] = replace(m.slot, addr=m.node.host, port=m.node.port,
                                        admin=AdminState.MAINT, sessions=0)
        for s in sp.drain:
            cmds += _empty(s, "slot needed for a node without one: its sessions are shut, "
                           "it is re-used on the next pass")
            view[s.name] = replace(s, admin=AdminState.MAINT, sessions=0)
        if sp.left_out:
            kind = "backup slots" if members[0].backup else "slots"
            shown = ", ".join(str(n) for n in sp.left_out)
            notes.append(Note(
                "slots_exhausted", t.group,
                f"{len(sp.left_out)} node(s) of {t.group} have no free slot among the "
                f"{len(members)} {kind} of {t.backend!r} and are not routed there: {shown}; "
                "declare more slots (setting slots_per_backend, `sentinel-haproxy config`)",
                t.backend, len(sp.left_out)))
        if sp.drain:
            notes.append(Note(
                "slot_draining", t.group,
                f"slots {', '.join(s.name for s in sp.drain)} of {t.backend!r} hold sessions "
                "to nodes the group no longer has: shut, re-used next pass", t.backend))
    return view, free, cmds, notes


def _empty(s: ServerState, why: str) -> list[Command]:
    ref = f"{s.backend}/{s.name}"
    out = []
    if s.admin is not AdminState.MAINT:
        out.append(Command(f"set server {ref} state maint", s.backend, s.name, why,
                           s.admin.value, "maint"))
    # A slot that was in maint without sessions when read cannot have got one since.
    if s.admin is not AdminState.MAINT or s.sessions > 0:
        out.append(Command(f"shutdown sessions server {ref}", s.backend, s.name,
                           f"{why}; close its {s.sessions} session(s)", "", "sessions-closed"))
    return out


def _readdress(s: ServerState, node: Address) -> list[Command]:
    old = slots.server_addr(s)
    why = f"slot takes node {node} (was {old if old else 'unresolved'})"
    assert node.ip is not None
    return [*_empty(s, why),
            Command(f"set server {s.backend}/{s.name} addr {node.ip} port {node.port}",
                    s.backend, s.name, why, str(old or "-"), str(node), expect="addr")]
