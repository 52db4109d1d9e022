"""controller.topology: one identity per node, whether Sentinel names it by hostname or by IP.

Views are the captured real Sentinel replies (tests/data); the hostname variants rename the
captured addresses the way `announce-hostnames yes` reports them (the master by name, replicas
by IP, a replica's master-host by name), then check that decide reaches the same verdict.
"""

from __future__ import annotations

from captured import GROUP, A, B, node, views

from controller.decide import decide
from controller.model import Address
from controller.resolver import Resolution
from controller.topology import addresses, canonical_views, hostnames, identities

NA = Address("node-a.redis", node(A).port)
NB = Address("node-b.redis", node(B).port)


def named(state: str, names: dict[Address, Address]) -> list:  # type: ignore[type-arg]
    """The captured views of `state` with some IP addresses replaced by hostnames."""
    return canonical_views(views(state), names)


def resolved(**answers: tuple[str, ...]) -> dict[str, Resolution]:
    out = {}
    for host, addrs in answers.items():
        h = host.replace("_", "-") + ".redis"
        out[h] = Resolution(h, addrs) if addrs else Resolution(h, error="does not resolve")
    return out


def test_hostnames_are_found_in_every_place_sentinel_puts_an_address() -> None:
    """Master address, SENTINEL MASTER entry, replica and replica master-host all count."""
    v = named("steady", {node(A): NA})
    assert hostnames(v) == {"node-a.redis"}
    assert NA in addresses(v) and node(B) in addresses(v)


def test_a_name_becomes_its_address_and_decide_agrees() -> None:
    """With node-a's name resolved, the renamed views decide exactly like the captured ones."""
    v = named("steady", {node(A): NA})
    ident, problems = identities(addresses(v), resolved(node_a=(node(A).host,)))
    assert problems == {}
    assert ident[NA] == node(A)
    same = decide(GROUP, canonical_views(v, ident), 2)
    assert same == decide(GROUP, views("steady"), 2)
    assert same.master == node(A) and same.replicas == {node(B)}


def test_an_ip_literal_of_a_named_node_is_the_same_node() -> None:
    """A replica listed by IP that is one of a name's addresses (same port) is that name's
    node, even when the name's first address is another one (A and AAAA)."""
    ident, _ = identities({NA, Address("::1", NA.port)},
                          resolved(node_a=("127.0.0.9", "::1")))
    assert ident[NA] == Address("127.0.0.9", NA.port)
    assert ident[Address("::1", NA.port)] == Address("127.0.0.9", NA.port)
    other_port = Address("::1", NA.port + 1)
    assert identities({NA, other_port}, resolved(node_a=("::1",)))[0][other_port] == other_port


def test_an_unresolved_name_keeps_its_hostname_with_a_reason() -> None:
    """A name without an answer stays a hostname (no slot can take it) and says why."""
    ident, problems = identities({NA, NB}, resolved(node_a=(), node_b=("127.0.0.3",)))
    assert ident[NA] == NA and NA.ip is None
    assert problems == {NA: "node-a.redis does not resolve"}
    assert ident[NB] == Address("127.0.0.3", NB.port)


def test_two_names_on_one_address_are_a_conflict_and_both_stay_out() -> None:
    """Two different names resolving to the same IP and port: neither is trusted."""
    same_port = Address("node-b.redis", NA.port)
    ident, problems = identities({NA, same_port},
                                 resolved(node_a=("127.0.0.7",), node_b=("127.0.0.7",)))
    assert ident[NA] == NA and ident[same_port] == same_port
    assert "both resolve to 127.0.0.7" in problems[NA] and problems[same_port] == problems[NA]


def test_an_unresolved_master_name_decides_a_master_no_slot_can_take() -> None:
    """Sentinel's verdict stands (epochs, health); the master just has no IP to route to."""
    v = named("steady", {node(A): NA})
    ident, _ = identities(addresses(v), resolved(node_a=()))
    d = decide(GROUP, canonical_views(v, ident), 2)
    assert d.master == NA and d.master.ip is None


def test_ipv6_literals_are_normalised() -> None:
    """`0:0::1` from one place and `::1` from another are the same node."""
    ident, _ = identities({Address("0:0::1", 7000), Address("::1", 7000)}, {})
    assert set(ident.values()) == {Address("::1", 7000)}
