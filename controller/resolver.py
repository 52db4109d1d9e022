"""Name resolution for Redis nodes: the only module of the daemon that does DNS.

With `announce-hostnames yes` Sentinel names nodes by hostname (a Kubernetes pod's DNS name);
HAProxy's Runtime API takes only IP addresses (`set server B/S addr IP port P`). `resolve_all()`
returns every usable address of each name (A and AAAA), looked up in an optional hosts file
first (`resolver_hosts_file`: pinned names, tests), then with the system resolver
(getaddrinfo), each answer cached for `resolve_cache_s` so that a name is asked again on the
first pass after that (a restarted pod's new IP is seen within a pass or two). IP literals are
returned normalised, never looked up. Lookups run on a few threads with one deadline per lookup
(`resolve_timeout_s` from when it was asked): a slow DNS server delays the call that asked by
at most that, and a name whose answer is late is "not resolved" until it comes. Later calls do
not wait again for a lookup already past its deadline: one that hangs (a DNS server that does
not answer: glibc gives up after 10 s) costs one pass `resolve_timeout_s`, not every pass.

Usable = an address HAProxy can connect to: not unspecified (0.0.0.0, ::), multicast,
broadcast or IPv6 link-local (needs a scope HAProxy's `set server addr` cannot take), and of
a family `resolve_family` allows. Order: `any` and `ipv4-first` give IPv4 addresses first,
`ipv6-first` IPv6 first; `ipv4`/`ipv6` keep only that family; within a family, sorted (a DNS
server that rotates its answers must not make a node's address flap).

Must not decide which address a node gets (controller.topology does) and must not raise on a
lookup failure: a failure is a `Resolution` with a reason.
"""

from __future__ import annotations

import concurrent.futures
import functools
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

FAMILIES = ("any", "ipv4-first", "ipv6-first", "ipv4", "ipv6")

Lookup = Callable[[str], list[str]]  # name -> IP strings (raises OSError on failure)


@dataclass(frozen=True)
class Resolution:
    """The usable addresses of one name, in preference order, or why there is none."""

    host: str
    addrs: tuple[str, ...] = ()
    error: str = ""  # empty when `addrs` is not

    @property
    def ok(self) -> bool:
        return bool(self.addrs)


def parse_hosts(text: str) -> dict[str, list[str]]:
    """A hosts file (`IP name [alias...]`, `#` comments) -> lowercased name -> IPs in order."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 2:
            continue
        try:
            ip = str(ipaddress.ip_address(words[0]))
        except ValueError:
            continue  # not an address line: ignored, as libc does
        for name in words[1:]:
            ips = out.setdefault(name.lower().rstrip("."), [])
            if ip not in ips:
                ips.append(ip)
    return out


def unusable(ip: str) -> str:
    """Why HAProxy cannot connect to `ip` ("" when it can)."""
    a = ipaddress.ip_address(ip)
    if a.is_unspecified:
        return "unspecified"
    if a.is_multicast:
        return "multicast"
    if isinstance(a, ipaddress.IPv4Address) and a == ipaddress.IPv4Address("255.255.255.255"):
        return "broadcast"
    if isinstance(a, ipaddress.IPv6Address) and a.is_link_local:
        return "IPv6 link-local (needs a scope)"
    return ""


def order(ips: Iterable[str], family: str = "any") -> tuple[list[str], list[str]]:
    """Usable addresses in preference order, and the refused ones with their reason."""
    v4: list[ipaddress.IPv4Address] = []
    v6: list[ipaddress.IPv6Address] = []
    refused: list[str] = []
    for ip in ips:
        why = unusable(ip)
        a = ipaddress.ip_address(ip)
        is_v4 = isinstance(a, ipaddress.IPv4Address)
        if not why and family == "ipv4" and not is_v4:
            why = "IPv6, resolve_family is ipv4"
        if not why and family == "ipv6" and is_v4:
            why = "IPv4, resolve_family is ipv6"
        if why:
            refused.append(f"{ip} ({why})")
        elif isinstance(a, ipaddress.IPv4Address):
            v4.append(a)
        else:
            v6.append(a)
    s4 = [str(a) for a in sorted(set(v4))]
    s6 = [str(a) for a in sorted(set(v6))]
    return (s6 + s4 if family == "ipv6-first" else s4 + s6), refused


def system_lookup(name: str) -> list[str]:
    """A and AAAA of `name` through the system resolver (getaddrinfo)."""
    infos = socket.getaddrinfo(name, None, socket.AF_UNSPEC, socket.SOCK_STREAM)
    return [str(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])) for info in infos]


class Resolver:
    """Cached, bounded lookups of node names. Thread-safe."""

    def __init__(
        self,
        cache_s: float = 1.0,
        timeout_s: float = 1.0,
        family: str = "any",
        hosts_file: str = "",
        lookup: Lookup = system_lookup,
        clock: Callable[[], float] = time.monotonic,
        workers: int = 4,
    ) -> None:
        if family not in FAMILIES:
            raise ValueError(f"resolve_family {family!r}: one of {', '.join(FAMILIES)}")
        self.cache_s = cache_s
        self.timeout_s = timeout_s
        self.family = family
        self.hosts_file = hosts_file
        self._lookup = lookup
        self._clock = clock
        self._cache: dict[str, tuple[float, Resolution]] = {}  # name -> (expiry, answer)
        # name -> (lookup running, when it was asked)
        self._pending: dict[str, tuple[concurrent.futures.Future[Resolution], float]] = {}
        self._lock = threading.RLock()  # a done future runs its callback in the caller
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, "resolver")
        self.lookups = 0  # answers obtained (cache misses), for tests and metrics

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def resolve(self, host: str) -> Resolution:
        return self.resolve_all([host])[host]

    def resolve_all(self, hosts: Iterable[str]) -> dict[str, Resolution]:
        """Each host's resolution; a lookup not answered within `timeout_s` of being asked
        (by this call or an earlier one) is a failure."""
        now = self._clock()
        out: dict[str, Resolution] = {}
        waiting: dict[str, tuple[concurrent.futures.Future[Resolution], float]] = {}
        with self._lock:
            for host in set(hosts):
                ip = _literal(host)
                if ip is not None:
                    addrs, refused = order([ip], self.family)
                    out[host] = Resolution(host, tuple(addrs), _refusal(refused))
                    continue
                cached = self._cache.get(host)
                if cached is not None and cached[0] > now:
                    out[host] = cached[1]
                    continue
                pending = self._pending.get(host)
                if pending is None:
                    pending = (self._pool.submit(self._answer, host), now)
                    self._pending[host] = pending
                    pending[0].add_done_callback(functools.partial(self._store, host))
                waiting[host] = (pending[0], pending[1] + self.timeout_s)
        live = {fut: due for fut, due in waiting.values() if due > now}
        if live:  # lookups past their deadline (asked by an earlier call) are not waited for
            concurrent.futures.wait(live, timeout=max(live.values()) - now)
        for host, (fut, _) in waiting.items():
            if fut.done() and not fut.cancelled():
                out[host] = fut.result()
            else:
                out[host] = Resolution(host, error=f"no answer within {self.timeout_s}s")
        return out

    def _store(self, host: str, fut: concurrent.futures.Future[Resolution]) -> None:
        if fut.cancelled():
            return
        with self._lock:
            self._pending.pop(host, None)
            self._cache[host] = (self._clock() + self.cache_s, fut.result())
            self.lookups += 1

    def _answer(self, host: str) -> Resolution:
        """Look `host` up (hosts file, then system); never raises."""
        name = host.lower().rstrip(".")
        try:
            pinned = self._pinned().get(name)
            ips = pinned if pinned is not None else self._lookup(host)
        except OSError as e:
            return Resolution(host, error=f"does not resolve: {e.strerror or e}")
        except Exception as e:  # a resolver bug must not break the pass
            return Resolution(host, error=f"lookup failed: {type(e).__name__}: {e}")
        addrs, refused = order(ips, self.family)
        if not addrs:
            return Resolution(host, error=_refusal(refused) or "resolves to no address")
        return Resolution(host, tuple(addrs))

    def _pinned(self) -> dict[str, list[str]]:
        if not self.hosts_file:
            return {}
        try:
            return parse_hosts(Path(self.hosts_file).read_text())
        except OSError:
            return {}  # unreadable: the system resolver answers; settings checked it at start


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def _refusal(refused: list[str]) -> str:
    return f"only addresses HAProxy cannot reach: {', '.join(refused)}" if refused else ""
