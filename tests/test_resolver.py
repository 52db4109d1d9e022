"""controller.resolver: hosts files, usable addresses and their order, the cache, the deadline.

The system resolver is replaced by a function (no DNS in unit tests); the clock is a value.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from controller.resolver import Resolver, order, parse_hosts, system_lookup, unusable


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def counting(answers: dict[str, list[str]]) -> tuple[list[str], object]:
    asked: list[str] = []

    def lookup(name: str) -> list[str]:
        asked.append(name)
        if name not in answers:
            raise OSError(-2, "Name or service not known")
        return answers[name]

    return asked, lookup


def test_parse_hosts_reads_names_aliases_and_comments() -> None:
    """Hosts lines map every name and alias (lowercased) to its addresses, comments ignored."""
    text = ("# comment\n127.0.0.1 localhost\n::1 localhost ip6-localhost  # v6\n"
            "10.0.0.5 Redis-0.redis redis-0\nnot-an-ip name\n\n")
    hosts = parse_hosts(text)
    assert hosts["localhost"] == ["127.0.0.1", "::1"]
    assert hosts["redis-0.redis"] == ["10.0.0.5"] and hosts["redis-0"] == ["10.0.0.5"]
    assert "name" not in hosts


@pytest.mark.parametrize(("ip", "why"), [
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("224.0.0.1", "multicast"),
    ("255.255.255.255", "broadcast"), ("fe80::1", "IPv6 link-local (needs a scope)"),
    ("127.0.0.5", ""), ("::1", ""), ("10.1.2.3", ""),
])
def test_unusable_addresses(ip: str, why: str) -> None:
    """Addresses HAProxy cannot connect to are named with the reason."""
    assert unusable(ip) == why


def test_order_prefers_families_and_sorts_within() -> None:
    """`any` puts IPv4 first, `ipv6-first` IPv6 first; each family sorted; filters refuse."""
    ips = ["::1", "10.0.0.9", "10.0.0.2", "0.0.0.0"]
    assert order(ips, "any") == (["10.0.0.2", "10.0.0.9", "::1"], ["0.0.0.0 (unspecified)"])
    assert order(ips, "ipv6-first")[0] == ["::1", "10.0.0.2", "10.0.0.9"]
    assert order(ips, "ipv6")[0] == ["::1"]
    assert "10.0.0.2 (IPv4, resolve_family is ipv6)" in order(ips, "ipv6")[1]
    assert order(ips, "ipv4")[0] == ["10.0.0.2", "10.0.0.9"]


def test_ip_literals_are_normalised_without_a_lookup() -> None:
    """An IP literal is its own answer, normalised as HAProxy prints it; nothing is asked."""
    asked, lookup = counting({})
    r = Resolver(lookup=lookup)  # type: ignore[arg-type]
    assert r.resolve("0:0:0:0:0:0:0:1").addrs == ("::1",)
    assert r.resolve("127.0.0.5").addrs == ("127.0.0.5",)
    assert r.resolve("0.0.0.0").error.startswith("only addresses HAProxy cannot reach")
    assert asked == []


def test_answers_are_cached_then_asked_again() -> None:
    """A name is asked once per `cache_s`; after that the next call asks again."""
    clock = Clock()
    answers = {"redis-0": ["10.0.0.5"]}
    asked, lookup = counting(answers)
    r = Resolver(cache_s=1.0, lookup=lookup, clock=clock)  # type: ignore[arg-type]
    assert r.resolve("redis-0").addrs == ("10.0.0.5",)
    assert r.resolve("redis-0").addrs == ("10.0.0.5",)
    assert asked == ["redis-0"]
    answers["redis-0"] = ["10.0.0.7"]  # the pod came back elsewhere
    clock.t += 1.01
    assert r.resolve("redis-0").addrs == ("10.0.0.7",)
    assert asked == ["redis-0", "redis-0"]


def test_failures_carry_a_reason() -> None:
    """A name that does not resolve, or only to unusable addresses, says why."""
    _, lookup = counting({"zero": ["0.0.0.0"]})
    r = Resolver(lookup=lookup)  # type: ignore[arg-type]
    gone = r.resolve("gone.example")
    assert not gone.ok and gone.error == "does not resolve: Name or service not known"
    zero = r.resolve("zero")
    assert not zero.ok and "0.0.0.0 (unspecified)" in zero.error


def test_hosts_file_answers_before_the_system(tmp_path: Path) -> None:
    """Names in `hosts_file` come from it (re-read on each lookup); others from the system."""
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.51 node-a\n")
    clock = Clock()
    asked, lookup = counting({"other": ["10.0.0.1"]})
    r = Resolver(cache_s=0.5, hosts_file=str(hosts), lookup=lookup,  # type: ignore[arg-type]
                 clock=clock)
    assert r.resolve("node-a").addrs == ("127.0.0.51",)
    assert r.resolve("other").addrs == ("10.0.0.1",)
    assert asked == ["other"]
    hosts.write_text("127.0.0.53 node-a\n")
    clock.t += 1
    assert r.resolve("node-a").addrs == ("127.0.0.53",)


def test_a_slow_lookup_costs_at_most_the_deadline() -> None:
    """A lookup that hangs fails the pass after `timeout_s`; its late answer is cached."""
    release = threading.Event()

    def slow(name: str) -> list[str]:
        release.wait(10)
        return ["10.0.0.8"]

    r = Resolver(timeout_s=0.05, lookup=slow)
    first = r.resolve("slow")
    assert not first.ok and first.error == "no answer within 0.05s"
    release.set()
    r._pool.shutdown(wait=True)  # the late answer lands in the cache
    assert r.resolve("slow").addrs == ("10.0.0.8",)


def test_system_lookup_resolves_localhost() -> None:
    """The system resolver answers `localhost` with a loopback address (no network needed)."""
    assert "127.0.0.1" in system_lookup("localhost")


def test_a_lookup_that_hangs_delays_only_the_call_that_asked() -> None:
    """A lookup that hangs costs the call that asked it `timeout_s`; a later call (the next
    pass) neither waits for it again nor asks again, and still answers a fresh name. It hangs
    as a stopped container's name did when the DNS server could not be reached (10 s, then
    glibc's EAI_AGAIN, captured with getaddrinfo in a network namespace without a route)."""
    release = threading.Event()
    asked: list[str] = []

    def lookup(name: str) -> list[str]:
        asked.append(name)
        if name == "redis1b":
            return ["172.17.0.4"]
        release.wait(10)
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    clock = Clock()
    r = Resolver(timeout_s=0.2, cache_s=1.0, lookup=lookup, clock=clock)
    t0 = time.monotonic()
    assert r.resolve("redis1a").error == "no answer within 0.2s"
    assert time.monotonic() - t0 >= 0.19
    clock.t += 1.0  # the next pass, a second later: the lookup still hangs
    t1 = time.monotonic()
    out = r.resolve_all(["redis1a", "redis1b"])
    assert time.monotonic() - t1 < 0.15  # redis1b answered at once; redis1a not waited for
    assert out["redis1a"].error == "no answer within 0.2s"
    assert out["redis1b"].addrs == ("172.17.0.4",)
    assert sorted(asked) == ["redis1a", "redis1b"]
    release.set()
    r._pool.shutdown(wait=True)  # the late failure lands in the cache
    assert r.resolve("redis1a").error == "does not resolve: Temporary failure in name resolution"
