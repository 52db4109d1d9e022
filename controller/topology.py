"""One identity per Redis node, whatever names it: Sentinel, a replica's `master_host`, HAProxy.

With `announce-hostnames` Sentinel reports the master as `redis-0.redis:6379` while it may list
a replica by IP, and a replica's `master-host` is whatever it was told (`REPLICAOF name`).
`identities()` maps every address in the Sentinels' views to the node's identity: an IP
address and the port. A hostname becomes its first usable address (controller.resolver's
order); an IP literal that is one of a name's addresses (same port) becomes that name's
identity, so `10.0.0.5:6379` and `redis-0.redis:6379` are the same node. `canonical_views()`
rewrites the views with it, so that decide and plan compare addresses only, and slot backends
get IPs they can push to HAProxy.

A name that resolves to nothing usable keeps its hostname: it matches no slot (it stays out
with its reason) and, being no IP, can never be pushed to HAProxy. Two different names whose
addresses are the same IP and port (a stale DNS record, a reused pod IP) are a conflict: both
keep their hostnames and stay out, because routing to that address could reach either node
(for writes: a node Sentinel did not elect).

Pure: the resolutions come in as values; no DNS, no clock, no logging.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

from controller.model import Address, MasterView, ReplicaInfo, SentinelView, normal_ip
from controller.resolver import Resolution


def addresses(views: Iterable[SentinelView]) -> set[Address]:
    """Every node address the views mention."""
    return set().union(*addresses_by_group(views).values())


def addresses_by_group(views: Iterable[SentinelView]) -> dict[str, set[Address]]:
    """Every node address the views mention, per group."""
    out: dict[str, set[Address]] = {}
    for v in views:
        for g, m in v.masters.items():
            mine = out.setdefault(g, set())
            mine |= {m.addr, m.master_entry_addr}
            for r in m.replicas:
                mine.add(r.addr)
                if r.master_addr is not None:
                    mine.add(r.master_addr)
    return out


def hostnames(views: Iterable[SentinelView]) -> set[str]:
    """The hosts in the views that are names, not IP addresses (they need resolving)."""
    return {a.host for a in addresses(views) if normal_ip(a.host) is None}


def identities(
    addrs: Iterable[Address], resolved: Mapping[str, Resolution]
) -> tuple[dict[Address, Address], dict[Address, str]]:
    """Each address -> the node's identity, and the addresses that stay out -> why."""
    addrs = set(addrs)
    chosen: dict[Address, Address] = {}  # named address -> its IP identity
    problems: dict[Address, str] = {}
    for a in sorted(x for x in addrs if normal_ip(x.host) is None):
        r = resolved.get(a.host)
        if r is None or not r.ok:
            problems[a] = f"{a.host} {r.error if r is not None else 'was not resolved'}"
            continue
        chosen[a] = Address(r.addrs[0], a.port)
    by_ip: dict[Address, list[Address]] = {}
    for named, ident in chosen.items():
        by_ip.setdefault(ident, []).append(named)
    for ident, names in by_ip.items():
        if len({n.host.lower().rstrip(".") for n in names}) > 1:
            shown = " and ".join(sorted(str(n) for n in names))
            for n in names:
                problems[n] = f"{shown} both resolve to {ident}: which node is there?"
                del chosen[n]
    # An IP literal that is one of a (non-conflicting) name's addresses is that node.
    alias: dict[Address, Address] = {}
    for named, ident in chosen.items():
        r = resolved[named.host]
        for ip in r.addrs:
            alias.setdefault(Address(ip, named.port), ident)
    out: dict[Address, Address] = {}
    for a in addrs:
        literal = normal_ip(a.host)
        if literal is None:
            out[a] = chosen.get(a, a)
        else:
            lit = Address(literal, a.port)
            out[a] = alias.get(lit, lit)
    return out, problems


def canonical_views(
    views: Sequence[SentinelView], ident: Mapping[Address, Address]
) -> list[SentinelView]:
    """The views with every node address replaced by its identity."""
    if all(k == v for k, v in ident.items()):  # IP addresses only, already normal: as is
        return list(views)

    def a(x: Address) -> Address:
        return ident.get(x, x)

    def replica(r: ReplicaInfo) -> ReplicaInfo:
        return dataclasses.replace(
            r, addr=a(r.addr), master_addr=None if r.master_addr is None else a(r.master_addr)
        )

    def master(m: MasterView) -> MasterView:
        return dataclasses.replace(
            m, addr=a(m.addr), master_entry_addr=a(m.master_entry_addr),
            replicas=tuple(replica(r) for r in m.replicas),
        )

    return [dataclasses.replace(v, masters={k: master(m) for k, m in v.masters.items()})
            for v in views]
