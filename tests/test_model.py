"""controller.model.Address: the one host:port type and parser, IPv6 included."""

from __future__ import annotations

import pytest

from controller.model import Address, normal_ip


@pytest.mark.parametrize(("text", "addr"), [
    ("127.0.0.1:6379", Address("127.0.0.1", 6379)),
    ("[::1]:26379", Address("::1", 26379)),
    ("redis-0.redis.ns.svc:6379", Address("redis-0.redis.ns.svc", 6379)),
    ("[2001:db8::7]:1", Address("2001:db8::7", 1)),
])
def test_parse_and_str_round_trip(text: str, addr: Address) -> None:
    """`str` writes IPv6 in brackets, so that `parse` reads every address back."""
    assert Address.parse(text) == addr
    assert str(addr) == text
    assert Address.parse(str(addr)) == addr


@pytest.mark.parametrize("text", ["::1:6379", "localhost", "[::1]", "h:0", "h:70000", ":1"])
def test_parse_refuses_ambiguous_or_broken_input(text: str) -> None:
    """An unbracketed IPv6, a missing or bad port, an empty host: ValueError naming it."""
    with pytest.raises(ValueError, match="address"):
        Address.parse(text)


def test_ip_is_normalised_and_names_have_none() -> None:
    """`ip` is the address as HAProxy prints it; a hostname has none."""
    assert Address("0:0:0:0:0:0:0:1", 1).ip == "::1"
    assert Address("127.0.0.1", 1).ip == "127.0.0.1"
    assert Address("redis-0", 1).ip is None
    assert normal_ip("[::1]") == "::1"
