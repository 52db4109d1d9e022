"""Load the real replies captured in tests/data (see tests/data/README.md) for unit tests.

Sentinel replies become `SentinelView`s through the reader's own parsers (`parse_head` and
`parse_groups`, RESP2 replies with `INFO sentinel` as raw text, as a bare connection reads
them; `SENTINEL MASTER redis1` is the group's `SENTINEL MASTERS` entry, the same field list,
as tests/data/sentinel_groups.json shows); HAProxy
state batches through `parse_state_batch`, as `HAProxyClient.state()` does. No I/O besides
reading the files.
"""

from __future__ import annotations

import dataclasses
import json
from functools import cache
from pathlib import Path
from typing import Any

from controller.haproxy_parse import parse_state_batch
from controller.model import Address, HAProxyState, MasterView, SentinelView
from controller.sentinel_parse import parse_groups, parse_head

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


def raw(state: str) -> dict[str, dict[str, Any]]:
    """sentinel "host:port" -> command -> raw RESP2 reply, in the captured order."""
    snap: dict[str, dict[str, Any]] = load(state)["resp2"]
    return snap


def group_replies(state: str, sentinel: str) -> list[Any]:
    """One Sentinel's replies in the order of `group_commands([GROUP])`."""
    replies = load(state)["resp2"][sentinel]
    return [
        replies["SENTINEL MASTERS"][0],
        replies[f"SENTINEL GET-MASTER-ADDR-BY-NAME {GROUP}"],
        replies[f"SENTINEL REPLICAS {GROUP}"],
    ]


def views(state: str) -> list[SentinelView]:
    """Every Sentinel's view in `state`, in configuration order."""
    doc = load(state)
    return [parse_groups(name, [GROUP], group_replies(state, name),
                         parse_head(doc["info_text"][name], doc["resp2"][name]["SENTINEL MYID"]))[0]
            for name in doc["sentinels"]]


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
    return parse_state_batch(haproxy_text(name))


def selecting(state: str = "master_down") -> list[SentinelView]:
    """The `state` views with the last Sentinel as a leader that chose B: its entry flagged
    failover_in_progress, B flagged `promoted` (the window before +promoted-slave); every
    Sentinel sees the master o_down by then."""
    vs = [with_master(v, flags=master(v).flags | {"o_down"}) for v in views(state)]
    leader = vs[-1]
    m = master(leader)
    reps = tuple(dataclasses.replace(r, flags=r.flags | {"promoted"}) if r.addr == node(B)
                 else r for r in m.replicas)
    vs[-1] = with_master(leader, flags=m.flags | {"failover_in_progress"}, replicas=reps,
                         failover_state="wait_promotion")
    return vs
