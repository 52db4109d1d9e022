"""A complete haproxy.cfg for the groups the Sentinels monitor (`sentinel-haproxy config`). Pure.

The reference layout of haproxy/haproxy.cfg, with server slots instead of hand-kept server
lists: per group a write frontend and a read frontend (ports from `first_frontend_port`, +2 per
group, groups sorted by name; `group_ports` pins a group's ports), a write backend with
`slots_per_backend` slots and a read backend with as many slots plus `fallback_slots` backup
slots (its read fallback: the master). Every slot is `disabled` with an IP placeholder (facts:
an `init-addr none` slot cannot be filled at runtime in HAProxy 2.6); the controller pushes
each node's address into a slot and sets its state (controller.slots). The semantics are those
of the shipped file (see its comments): write servers without checks, sessions shut on
`maint`, retries with redispatch; read servers with an L4 check that only ever takes a dead
server out, readers never cut.
Must not do I/O: the caller gives the group names and prints the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from controller.slots import PLACEHOLDER

# The lease map to put next to the generated file (its `default-path config`): no entry, so
# writes are refused until the controller sets one (controller.lease).
LEASE_MAP_TEXT = """\
# The controller's write lease (see haproxy.cfg): one entry, `lease <epoch ms>`, set at runtime
# through the admin socket. Shipped empty: until the controller sets it, writes are refused.
"""

_NAME_RE = re.compile(r"[A-Za-z0-9_.:-]+")  # what HAProxy accepts in a proxy name


@dataclass(frozen=True)
class Layout:
    """What the generated file looks like; defaults are the reference layout."""

    write_backend: str = "{master}_master"
    read_backend: str = "{master}_replicas"
    slot_prefix: str = "slot"
    slots: int = 8
    fallback_slots: int = 2
    first_port: int = 5000
    stats_port: int = 9000  # 0: no stats page
    bind_address: str = ""  # "" = every address
    admin_socket: str = "/var/run/haproxy/admin.sock"
    fixed_ports: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    group_slots: Mapping[str, int] = field(default_factory=dict)
    # The write lease's map file (controller.lease), next to the config; "": no lease check.
    lease_map: str = "lease.map"
    # The server-state file the controller keeps (Settings.state_file_for); "": none.
    state_file: str = ""


def ports(groups: Iterable[str], layout: Layout) -> dict[str, tuple[int, int]]:
    """(write, read) port of each group: pinned ones as given, the others from `first_port`
    in name order, +2 per group, skipping ports already taken."""
    names = sorted(set(groups))
    out = {g: layout.fixed_ports[g] for g in names if g in layout.fixed_ports}
    used = {p for g, pair in layout.fixed_ports.items() for p in pair} | {layout.stats_port}
    port = layout.first_port
    for g in names:
        if g in out:
            continue
        while port in used or port + 1 in used:
            port += 2
        if port + 1 > 65535:
            raise ValueError(f"no free port pair left for group {g!r} (from {layout.first_port})")
        out[g] = (port, port + 1)
        used |= {port, port + 1}
        port += 2
    return out


def _bind(address: str, port: int) -> str:
    if ":" in address:
        return f"[{address}]:{port}"
    return f"{address}:{port}"


def check_names(groups: Iterable[str], layout: Layout) -> None:
    """ValueError when a group name cannot be part of an HAProxy proxy name."""
    for g in groups:
        if not _NAME_RE.fullmatch(g):
            raise ValueError(f"group {g!r}: HAProxy names take letters, digits and _.:- only")
    for tpl in (layout.write_backend, layout.read_backend):
        if not _NAME_RE.fullmatch(tpl.format(master="x")):
            raise ValueError(f"backend name template {tpl!r} makes invalid HAProxy names")


def group_sections(group: str, write: int, read: int, layout: Layout) -> str:
    """The frontend and backend sections of one group."""
    n = layout.group_slots.get(group, layout.slots)
    p = layout.slot_prefix
    ph = f"{PLACEHOLDER.host}:{PLACEHOLDER.port}"
    wb, rb = layout.write_backend.format(master=group), layout.read_backend.format(master=group)
    fb = (f"    server-template {p}-fallback 1-{layout.fallback_slots} {ph} backup\n"
          if layout.fallback_slots else "")
    checks = ("default-server disabled check inter 1s fall 2 rise 2 observe layer4 error-limit 1"
              " on-error mark-down")
    lease = (  # new write connections only while the controller's lease is in the future
        "    tcp-request connection set-var(sess.now_ms) date(0,ms)\n"
        "    tcp-request connection reject if "
        f"{{ str(lease),map_str_int({layout.lease_map},0),sub(sess.now_ms) -m int le 0 }}\n"
        if layout.lease_map else "")
    return f"""\
# ---- group {group}: write :{write}, read :{read} ----
frontend {group}_write
    bind {_bind(layout.bind_address, write)}
{lease}    default_backend {wb}

frontend {group}_read
    bind {_bind(layout.bind_address, read)}
    default_backend {rb}

backend {wb}
    retries 10
    option redispatch 1
    timeout connect 100ms
    server-template {p} 1-{n} {ph} disabled on-marked-down shutdown-sessions

backend {rb}
    balance roundrobin
    retries 3
    option redispatch 1
    timeout connect 50ms
    {checks}
    server-template {p} 1-{n} {ph}
{fb}"""


def render(groups: Iterable[str], layout: Layout, only: Iterable[str] = (),
           sections_only: bool = False, version: str = "") -> str:
    """The whole file (or, with `sections_only`, the group sections alone) for `groups`;
    ports are computed over every group, `only` (when given) limits the groups printed."""
    names = sorted(set(groups))
    check_names(names, layout)
    pairs = ports(names, layout)
    shown = [g for g in names if g in set(only)] if only else names
    body = "\n".join(group_sections(g, *pairs[g], layout) for g in shown)
    if sections_only:
        return body
    maxconn = max(4096, 1024 * len(names))
    lease_doc = "" if not layout.lease_map else f"""\
# Write lease: a write frontend accepts a new connection only while the `lease` entry of
# {layout.lease_map} (epoch ms, next to this file, set by the controller while it hears from a
# majority of the Sentinels) is in the future; an empty map refuses writes until the
# controller is back.
"""
    default_path = "    # Relative file names (the lease map) are next to this file.\n" \
        "    default-path config\n" if layout.lease_map else ""
    state_file = "" if not layout.state_file else (
        "    # The server states the controller last applied, kept by it: a restarted or\n"
        "    # reloaded HAProxy starts from them (writes wait for the write lease).\n"
        f"    server-state-file {layout.state_file}\n")
    load_state = "" if not layout.state_file else "    load-server-state-from-file global\n"
    stats = "" if not layout.stats_port else f"""\
listen stats
    mode http
    bind {_bind(layout.bind_address, layout.stats_port)}
    timeout client 30s
    timeout server 30s
    stats enable
    stats uri /
    stats refresh 2s

"""
    return f"""\
# Generated by `sentinel-haproxy config`{f' {version}' if version else ''} for {len(shown)} \
group(s): {', '.join(shown) or '-'}.
#
# Controller-driven, slot-based: every backend declares server slots (`server-template`, all
# `disabled`, an IP placeholder); the sentinel-haproxy controller gives each node Sentinel
# knows for the group a slot (`set server B/S addr IP port P`) and sets its state. A
# (re)started HAProxy starts from the server-state file the controller keeps (the states it
# last applied); without one it routes nothing until the controller has re-applied
# Sentinel's verdict.
# Write backends: exactly the elected master is ready; no health check; `maint` also shuts the
# sessions; a failed connect is retried every 100 ms on whatever server is ready then.
# Read backends: healthy replicas ready, the master as `backup` fallback (slot-fallback*);
# an L4 check and `observe layer4` take a dead replica out at once; readers are never cut.
# {layout.slots} slots per backend (setting slots_per_backend): a group needs one per node
# (master and every replica), plus room for nodes that move (docs/operations.md, "Slots").
{lease_doc}
global
{default_path}    log stdout format raw local0
    maxconn {maxconn}
    # Admin socket for the Runtime API: the controller needs level admin.
    stats socket {layout.admin_socket} mode 660 level admin
    stats timeout 30s
{state_file}
defaults
    mode tcp
    log global
    option tcplog
    # Redis connections are long-lived (pub/sub, blocking pops, pooled clients).
    timeout client 1h
    timeout server 1h
    timeout connect 1s
{load_state}
{stats}{body}"""
