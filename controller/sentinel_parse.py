"""Parse raw Sentinel replies and pub/sub messages into frozen values.

Input is what a bare redis-py connection returns with RESP2 and decode_responses=True (the
reader always speaks RESP2): flat field/value lists, `INFO` as raw text. Every function raises
`SentinelReplyError` naming the problem on input it does not understand. No I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from controller.model import Address, MasterView, ReplicaInfo, SentinelView


class SentinelReplyError(ValueError):
    """A Sentinel reply or event that does not have the expected shape."""


def _fields(raw: Any, what: str) -> dict[str, str]:
    """A RESP2 flat list `[k1, v1, k2, v2...]` as a str->str dict."""
    if isinstance(raw, Sequence) and not isinstance(raw, str | bytes):
        if len(raw) % 2:
            raise SentinelReplyError(f"{what}: odd number of items in field list ({len(raw)})")
        it = iter(raw)
        return {str(k): _scalar(v) for k, v in zip(it, it, strict=True)}
    raise SentinelReplyError(f"{what}: expected a field list, got {type(raw).__name__}")


def _scalar(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def _port(raw: str, what: str) -> int:
    try:
        port = int(raw)
    except ValueError:
        raise SentinelReplyError(f"{what}: port {raw!r} is not a number") from None
    if not 0 < port < 65536:
        raise SentinelReplyError(f"{what}: port {port} out of range")
    return port


def _int(d: dict[str, str], key: str, what: str, default: int | None = None) -> int:
    if key not in d:
        if default is not None:
            return default
        raise SentinelReplyError(f"{what}: field {key!r} missing")
    try:
        return int(d[key])
    except ValueError:
        raise SentinelReplyError(f"{what}: field {key!r}={d[key]!r} is not a number") from None


def _flags(raw: str) -> frozenset[str]:
    return frozenset(f for f in raw.split(",") if f)


def parse_addr(raw: Any, what: str) -> Address:
    """`SENTINEL GET-MASTER-ADDR-BY-NAME` reply: `[ip, port]`."""
    if raw is None:
        raise SentinelReplyError(f"{what}: unknown master (nil address)")
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes) or len(raw) != 2:
        raise SentinelReplyError(f"{what}: expected [host, port], got {raw!r:.80}")
    host = _scalar(raw[0])
    if not host:
        raise SentinelReplyError(f"{what}: empty host")
    return Address(host, _port(_scalar(raw[1]), what))


def parse_replica(raw: Any, what: str) -> ReplicaInfo:
    """One element of `SENTINEL REPLICAS <name>`."""
    d = _fields(raw, what)
    for key in ("ip", "port", "flags"):
        if key not in d:
            raise SentinelReplyError(f"{what}: field {key!r} missing")
    master_host = d.get("master-host", "?")
    master: Address | None = None
    if master_host not in ("", "?"):
        master = Address(master_host, _port(d.get("master-port", "0"), what + " master-port"))
    return ReplicaInfo(
        addr=Address(d["ip"], _port(d["port"], what)),
        flags=_flags(d["flags"]),
        role_reported=d.get("role-reported", ""),
        link_ok=d.get("master-link-status") == "ok",
        master_addr=master,
        link_down_ms=_int(d, "master-link-down-time", what, default=0),
    )


def parse_master_view(name: str, addr_raw: Any, master_raw: Any, replicas_raw: Any) -> MasterView:
    """Combine the three pipelined replies a Sentinel gives for one master group."""
    what = f"master {name!r}"
    addr = parse_addr(addr_raw, what + " address")
    d = _fields(master_raw, what)
    if d.get("name", name) != name:
        raise SentinelReplyError(f"{what}: reply is for {d.get('name')!r}")
    for key in ("ip", "port", "flags"):
        if key not in d:
            raise SentinelReplyError(f"{what}: field {key!r} missing")
    if not isinstance(replicas_raw, Sequence) or isinstance(replicas_raw, str | bytes):
        raise SentinelReplyError(f"{what}: replicas reply is not a list")
    replicas = tuple(
        parse_replica(r, f"{what} replica #{i}") for i, r in enumerate(replicas_raw)
    )
    return MasterView(
        name=name,
        addr=addr,
        epoch=_int(d, "config-epoch", what),
        flags=_flags(d["flags"]),
        master_entry_addr=Address(d["ip"], _port(d["port"], what)),
        replicas=replicas,
        failover_state=d.get("failover-state", ""),
        failover_timeout_ms=_int(d, "failover-timeout", what, default=180_000),
    )


def parse_master_names(raw: Any) -> list[str]:
    """`SENTINEL MASTERS` reply: the names of every monitored master."""
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        raise SentinelReplyError("SENTINEL MASTERS: expected a list")
    names = []
    for i, entry in enumerate(raw):
        d = _fields(entry, f"SENTINEL MASTERS entry #{i}")
        if "name" not in d:
            raise SentinelReplyError(f"SENTINEL MASTERS entry #{i}: field 'name' missing")
        names.append(d["name"])
    return names


def parse_tilt(raw: Any) -> bool:
    """`INFO sentinel` as raw text: is the Sentinel in TILT mode?"""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if not isinstance(raw, str):
        raise SentinelReplyError(f"INFO sentinel: unexpected reply type {type(raw).__name__}")
    for line in raw.splitlines():
        if line.startswith("sentinel_tilt:"):
            return line.split(":", 1)[1].strip() == "1"
    raise SentinelReplyError("INFO sentinel: no sentinel_tilt field (not a Sentinel?)")


def pipeline_commands(names: Sequence[str]) -> list[tuple[str, ...]]:
    """The commands one pass sends each Sentinel, in the order `parse_pipeline` reads them."""
    cmds: list[tuple[str, ...]] = [("INFO", "sentinel"), ("SENTINEL", "MASTERS")]
    for m in names:
        cmds.append(("SENTINEL", "GET-MASTER-ADDR-BY-NAME", m))
        cmds.append(("SENTINEL", "REPLICAS", m))
    return cmds


def parse_pipeline(
    sentinel: str, names: Sequence[str], replies: Sequence[Any]
) -> tuple[SentinelView, frozenset[str]]:
    """One Sentinel's replies to `pipeline_commands(names)`: its view of the groups `names`,
    and the names of every group it monitors. A refused command is an Exception in
    `replies`; one for a group this Sentinel does not monitor just leaves the group out.
    """
    if len(replies) != 2 + 2 * len(names):
        raise SentinelReplyError(f"expected {2 + 2 * len(names)} replies, got {len(replies)}")
    for r in replies[:2]:
        if isinstance(r, Exception):
            raise SentinelReplyError(f"{type(r).__name__}: {r}")
    tilt = parse_tilt(replies[0])
    all_names = parse_master_names(replies[1])
    entries = dict(zip(all_names, replies[1], strict=True))
    masters: dict[str, MasterView] = {}
    for i, m in enumerate(names):
        addr_r, repl_r = replies[2 + 2 * i], replies[3 + 2 * i]
        if m not in entries or isinstance(addr_r, Exception) or isinstance(repl_r, Exception):
            continue  # this Sentinel does not monitor m: it simply has no vote for it
        masters[m] = parse_master_view(m, addr_r, entries[m], repl_r)
    view = SentinelView(sentinel=sentinel, masters=masters, tilt=tilt)
    return view, frozenset(all_names)


# Events that may change the desired state; everything else (votes, hello...) is noise.
RELEVANT_EVENTS = frozenset(
    {
        "+switch-master",
        "+promoted-slave",
        "+failover-end",
        "+failover-end-for-timeout",
        "+try-failover",  # the leader flags failover_in_progress: fence writes now
        "+elected-leader",
        "+selected-slave",  # the leader chose the replica to promote: watch its ROLE
        "+failover-state-send-slaveof-noone",
        "+failover-state-wait-promotion",
        "+sdown",
        "-sdown",
        "+odown",
        "-odown",
        "+convert-to-slave",
        "+role-change",
        "-role-change",
        "+slave",
        "+slave-reconf-done",
        "+config-update-from",
        "+new-epoch",
        "+tilt",
        "-tilt",
        "+reset-master",
        "+monitor",
        "-monitor",
        "-failover-abort-not-elected",
        "-failover-abort-slave-timeout",
        "-failover-abort-no-good-slave",
    }
)

# Events that come just before or exactly at a change of master: they open a failover timeline.
FAILOVER_EVENTS = frozenset(
    {"+odown", "+try-failover", "+promoted-slave", "+switch-master", "+failover-end"}
)


@dataclass(frozen=True)
class SentinelEvent:
    """A pub/sub message from a Sentinel, split into its parts."""

    channel: str
    master: str | None  # the master group it concerns, when the message names one
    text: str

    @property
    def relevant(self) -> bool:
        return self.channel in RELEVANT_EVENTS


def parse_event(channel: Any, data: Any) -> SentinelEvent:
    """A pub/sub message. Formats (facts B.1):

    `+switch-master <name> <old-ip> <old-port> <new-ip> <new-port>`;
    `<type> <name> <ip> <port> [@ <master-name> <master-ip> <master-port>]`;
    `+new-epoch <n>`, `+tilt #tilt mode entered`, ...
    """
    ch = _scalar(channel)
    text = _scalar(data)
    if not ch or len(ch) > 64 or not ch.isprintable():
        raise SentinelReplyError(f"event: bad channel {ch!r:.80}")
    words = text.split()
    master: str | None = None
    if ch == "+switch-master":
        if len(words) != 5:
            raise SentinelReplyError(f"event {ch}: expected 5 words, got {text!r:.120}")
        master = words[0]
    elif "@" in words:
        i = words.index("@")
        if i + 1 >= len(words):
            raise SentinelReplyError(f"event {ch}: nothing after '@' in {text!r:.120}")
        master = words[i + 1]
    elif len(words) >= 2 and words[0] == "master":
        master = words[1]
    return SentinelEvent(channel=ch, master=master, text=text)
