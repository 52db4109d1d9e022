"""Parse raw Sentinel replies and pub/sub messages into frozen values.

Input is what a bare redis-py connection returns with RESP2 and decode_responses=True (the
reader always speaks RESP2): flat field/value lists, `INFO` as raw text. Every function raises
`SentinelReplyError` naming the problem on input it does not understand. No I/O here.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from controller.model import Address, MasterView, ReplicaInfo, SentinelView


class SentinelReplyError(ValueError):
    """A Sentinel reply or event that does not have the expected shape."""


class NotASentinelError(SentinelReplyError):
    """The peer answers like a Redis server, not like a Sentinel (no `SENTINEL` command)."""


def _fields(raw: Any, what: str) -> dict[str, str]:
    """A RESP2 flat list `[k1, v1, k2, v2...]` as a str->str dict."""
    if isinstance(raw, Sequence) and not isinstance(raw, str | bytes):
        if len(raw) % 2:
            raise SentinelReplyError(f"{what}: odd number of items in field list ({len(raw)})")
        if set(map(type, raw)) <= {str}:  # text already (the reader decodes): the fast case
            return dict(zip(raw[::2], raw[1::2], strict=True))
        it = iter(raw)
        return {_scalar(k): _scalar(v) for k, v in zip(it, it, strict=True)}
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
        other_sentinels=_int(d, "num-other-sentinels", what, default=0),
        down_after_ms=_int(d, "down-after-milliseconds", what, default=0),
        failover_state=d.get("failover-state", ""),
        failover_timeout_ms=_int(d, "failover-timeout", what, default=180_000),
    )


def parse_tilt(raw: Any) -> bool:
    """`INFO sentinel` as raw text: is the Sentinel in TILT mode?"""
    text = _info_text(raw)
    at = text.find("sentinel_tilt:")
    if at < 0:
        raise NotASentinelError("INFO sentinel has no sentinel_tilt field")
    return text[at + len("sentinel_tilt:"):].split("\n", 1)[0].strip() == "1"


def _info_text(raw: Any) -> str:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if not isinstance(raw, str):
        raise SentinelReplyError(f"INFO sentinel: unexpected reply type {type(raw).__name__}")
    return raw


_INFO_MASTER = re.compile(r"^master\d+:name=(.*),status=", re.MULTILINE)


def parse_info_masters(raw: Any) -> list[str]:
    """`INFO sentinel`: the names of every master group it monitors, from its
    `masterN:name=<name>,status=...` lines (a name may hold anything but `,status=`)."""
    text = _info_text(raw)
    names = _INFO_MASTER.findall(text)
    if len(names) != text.count(":name="):
        bad = next(ln for ln in text.splitlines()
                   if ":name=" in ln and not _INFO_MASTER.match(ln))
        raise SentinelReplyError(f"INFO sentinel: bad master line {bad[:120]!r}")
    return [n for n in names if n]


#: Asked of every Sentinel when a full pass starts: its TILT state, its ID and every group
#: it monitors; all of it in `INFO sentinel` and `SENTINEL MYID` (no per-group field lists).
HEAD_COMMANDS: list[tuple[str, ...]] = [("INFO", "sentinel"), ("SENTINEL", "MYID")]


@dataclass(frozen=True)
class Head:
    """What a Sentinel says about itself: read once per full pass, kept for the passes that
    read only some groups."""

    tilt: bool
    myid: str  # "" when the ACL user may not ask (counted by address then)
    names: tuple[str, ...]  # every group it monitors


def parse_head(info_raw: Any, myid_raw: Any) -> Head:
    """The replies to `HEAD_COMMANDS`; `myid_raw` None: not allowed to ask."""
    myid = "" if myid_raw is None else _scalar(myid_raw)
    if myid_raw is not None and (not myid or len(myid) > 64 or not myid.isalnum()):
        raise SentinelReplyError(f"SENTINEL MYID: not an ID: {myid!r:.80}")
    return Head(parse_tilt(info_raw), myid, tuple(parse_info_masters(info_raw)))


def group_commands(names: Sequence[str], discover: bool = False,
                   whole_list: bool = False) -> list[tuple[str, ...]]:
    """The commands that read groups `names` from one Sentinel, in the order `parse_groups`
    reads the replies: per group its master entry, address and replicas (and with
    `discover`, the group's other Sentinels). `whole_list`: the master entries come from one
    `SENTINEL MASTERS` (every group's: an ACL user allowed `sentinel|masters` but not
    `sentinel|master`)."""
    cmds: list[tuple[str, ...]] = [("SENTINEL", "MASTERS")] if whole_list and names else []
    for m in names:
        if not whole_list:
            cmds.append(("SENTINEL", "MASTER", m))
        cmds += [("SENTINEL", "GET-MASTER-ADDR-BY-NAME", m), ("SENTINEL", "REPLICAS", m)]
        if discover:
            cmds.append(("SENTINEL", "SENTINELS", m))
    return cmds


def parse_groups(
    sentinel: str, names: Sequence[str], replies: Sequence[Any], head: Head,
    discover: bool = False, whole_list: bool = False,
) -> tuple[SentinelView, list[tuple[Address, str]]]:
    """One Sentinel's replies to `group_commands(names, discover, whole_list)`: its view of
    those groups (TILT and ID from its `head`), and with `discover` the (address, run ID) of
    every other Sentinel it lists for them (a list that does not parse is skipped). A refused
    command is an Exception in `replies`: `No such master` leaves the group out (this
    Sentinel has no vote for it), anything else costs only that group (`group_errors`).
    """
    k = (2 if whole_list else 3) + (1 if discover else 0)
    extra = 1 if whole_list and names else 0
    if len(replies) != extra + k * len(names):
        raise SentinelReplyError(f"expected {extra + k * len(names)} replies, "
                                 f"got {len(replies)}")
    entries: dict[str, Any] = {}
    if extra:
        if isinstance(replies[0], Exception):
            raise SentinelReplyError(f"SENTINEL MASTERS: {type(replies[0]).__name__}: "
                                     f"{replies[0]}")
        if not isinstance(replies[0], Sequence) or isinstance(replies[0], str | bytes):
            raise SentinelReplyError("SENTINEL MASTERS: expected a list")
        entries = {str(e[1]): e for e in replies[0]
                   if isinstance(e, Sequence) and len(e) > 1 and e[0] == "name"}
    masters: dict[str, MasterView] = {}
    errors: dict[str, str] = {}
    found: list[tuple[Address, str]] = []
    for i, m in enumerate(names):
        at = extra + k * i
        if whole_list:
            entry_r: Any = entries.get(m, ValueError("No such master with that name"))
            addr_r, repl_r = replies[at:at + 2]
        else:
            entry_r, addr_r, repl_r = replies[at:at + 3]
        refused = [r for r in (entry_r, addr_r, repl_r) if isinstance(r, Exception)]
        if refused or addr_r is None:
            if not refused or "no such master" in str(refused[0]).lower():
                continue  # this Sentinel does not monitor m: it simply has no vote for it
            errors[m] = f"{type(refused[0]).__name__}: {refused[0]}"
            continue
        try:
            masters[m] = parse_master_view(m, addr_r, entry_r, repl_r)
        except SentinelReplyError as e:
            errors[m] = str(e)
            continue
        if discover:  # best effort: a bad list leaves the known Sentinels as they are
            with contextlib.suppress(SentinelReplyError):
                found += parse_sentinels(replies[at + k - 1], f"SENTINEL SENTINELS {m}")
    view = SentinelView(sentinel=sentinel, masters=masters, tilt=head.tilt, myid=head.myid,
                        group_errors=errors)
    return view, found


def parse_sentinels(raw: Any, what: str) -> list[tuple[Address, str]]:
    """`SENTINEL SENTINELS <group>`: the other Sentinels of the group, (address, run id)."""
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes):
        raise SentinelReplyError(f"{what}: expected a list")
    out: list[tuple[Address, str]] = []
    for i, entry in enumerate(raw):
        d = _fields(entry, f"{what} entry #{i}")
        for key in ("ip", "port", "runid"):
            if key not in d:
                raise SentinelReplyError(f"{what} entry #{i}: field {key!r} missing")
        out.append((Address(d["ip"], _port(d["port"], what)), d["runid"]))
    return out


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

# Logged in the failover timeline, but no pass: they never come alone, and what comes with
# them starts the pass.
# - `+new-epoch <n>` names no group (a pass on it reads every group from every Sentinel:
#   ~0.25 s of CPU at 1,000 groups, per Sentinel per failover): the leader publishes it with
#   `+try-failover <group>`, a voter with `+vote-for-leader` (whose state about the group does
#   not change), a Sentinel back from TILT with `+config-update-from ... @ <group>`;
# - `+config-update-from`: a Sentinel publishes it only where it takes a newer configuration
#   of a group from another one, and in the same instant the `+switch-master` that says where
#   it went (facts B.1, B.2).
TIMELINE_EVENTS = frozenset({"+new-epoch", "+config-update-from"})

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
    switched_to: Address | None = None  # `+switch-master`: the new master's address
    instance: Address | None = None  # `<type> <name> <ip> <port> @ ...`: the instance's address

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
    switched_to: Address | None = None
    instance: Address | None = None
    if ch == "+switch-master":
        if len(words) != 5:
            raise SentinelReplyError(f"event {ch}: expected 5 words, got {text!r:.120}")
        master = words[0]
        switched_to = Address(words[3], _port(words[4], f"event {ch}: new master port"))
    elif "@" in words:
        i = words.index("@")
        if i + 1 >= len(words):
            raise SentinelReplyError(f"event {ch}: nothing after '@' in {text!r:.120}")
        master = words[i + 1]
        if i == 4 and words[3].isdigit() and 0 < int(words[3]) < 65536:
            instance = Address(words[2], int(words[3]))
    elif len(words) >= 2 and words[0] == "master":
        master = words[1]
    return SentinelEvent(channel=ch, master=master, text=text, switched_to=switched_to,
                         instance=instance)
