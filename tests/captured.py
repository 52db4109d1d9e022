"""Load the real replies captured in tests/data (see tests/data/README.md) for unit tests.

Sentinel replies are turned into `SentinelView`s the way `SentinelReader` does (parse the
`INFO sentinel` tilt flag and the `SENTINEL MASTERS` entries, then one `MasterView` per group
from the address, the entry and the replicas); HAProxy state batches are split into their
three outputs as `HAProxyClient.state()` does. No I/O besides reading the files.
"""

from __future__ import annotations

import dataclasses
import json
from functools import cache
from pathlib import Path
from typing import Any, Literal

from controller.haproxy_parse import parse_info, parse_servers_state, parse_stat_sessions
from controller.model import Address, HAProxyState, MasterView, SentinelView
from controller.sentinel_parse import (
    parse_master_names,
    parse_master_view,
    parse_tilt,
)

DATA = Path(__file__).resolve().parent / "data"
GROUP = "redis1"
STATES = (
    "steady",
    "replica_dead",
    "master_down",
    "selected",
    "promoted",
    "switched",
    "old_master_returned",
    "converted",
    "tilt",
)
Proto = Literal["resp2", "resp3"]


@cache
def load(state: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DATA / f"sentinel_{state}.json").read_text())
    return doc


def node(name: str) -> Address:
    """Address of a node of the captured stack (`redis1a`, `redis1b`)."""
    host, port = str(load("steady")["nodes"][name]).rsplit(":", 1)
    return Address(host, int(port))


A = "redis1a"  # the first master
B = "redis1b"  # the first replica, master after the failover


def raw(state: str, proto: Proto = "resp2") -> dict[str, dict[str, Any]]:
    """sentinel "host:port" -> command -> raw reply, in the captured order."""
    snap: dict[str, dict[str, Any]] = load(state)[proto]
    return snap


def view_from(sentinel: str, replies: dict[str, Any], info: Any) -> SentinelView:
    """One Sentinel's view, built from its raw replies as the reader builds it."""
    entries_raw = replies["SENTINEL MASTERS"]
    names = parse_master_names(entries_raw)
    entries = dict(zip(names, entries_raw, strict=True))
    masters: dict[str, MasterView] = {
        GROUP: parse_master_view(
            GROUP,
            replies[f"SENTINEL GET-MASTER-ADDR-BY-NAME {GROUP}"],
            entries[GROUP],
            replies[f"SENTINEL REPLICAS {GROUP}"],
        )
    }
    return SentinelView(sentinel=sentinel, masters=masters, tilt=parse_tilt(info))


def views(state: str, proto: Proto = "resp2", info: Literal["dict", "text"] = "text"
          ) -> list[SentinelView]:
    """Every Sentinel's view in `state`, in configuration order.

    `info="text"` parses `INFO sentinel` as raw text (what a bare connection reads);
    `"dict"` as redis-py's `execute_command` returns it.
    """
    doc = load(state)
    out = []
    for name in doc["sentinels"]:
        replies = doc[proto][name]
        info_raw = doc["info_text"][name] if info == "text" else replies["INFO sentinel"]
        out.append(view_from(name, replies, info_raw))
    return out


def master(v: SentinelView) -> MasterView:
    return v.masters[GROUP]


def with_master(v: SentinelView, **changes: Any) -> SentinelView:
    """`v` with its group's MasterView changed (to build impossible or rare cases)."""
    return dataclasses.replace(
        v, masters={**v.masters, GROUP: dataclasses.replace(master(v), **changes)}
    )


def haproxy_text(name: str) -> str:
    return (DATA / name).read_text()


def haproxy_state(name: str) -> HAProxyState:
    """A captured `show info; show servers state; show stat -1 4 -1` reply, parsed."""
    text = haproxy_text(name)
    info_txt, rest = text.split("\n\n", 1)
    servers_txt, stat_txt = rest.split("\n\n", 1)
    backends = parse_servers_state(servers_txt)
    sessions = parse_stat_sessions(stat_txt)
    for be, servers in backends.items():
        for srv_name, srv in servers.items():
            n = sessions.get((be, srv_name), 0)
            if n:
                servers[srv_name] = dataclasses.replace(srv, sessions=n)
    return HAProxyState(info=parse_info(info_txt), backends=backends)
