"""Hypothesis settings and strategies for the property-based tests (tests/test_properties_*.py).

Inputs start from the real captured replies in tests/data (see tests/captured.py) and are
mutated: fields dropped, duplicated or swapped, values changed to garbage (huge numbers,
negative ports, unicode, None, bytes, nested lists), text truncated at random points. The
core's inputs (views, decisions, HAProxy states) are built from captured values with random
epochs, flags, addresses and admin states drawn from small pools, so that collisions
(duplicate addresses, agreeing and disagreeing Sentinels) are frequent.

Runs are reproducible: `derandomize=True` and no example database, so CI sees the same
examples every time. `SENTINEL_HAPROXY_FUZZ_SCALE=N` multiplies every example count and
draws random examples instead (a longer local hunt; a failure prints how to reproduce it).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any, TypeVar

from captured import (
    DATA,
    GROUP,
    STATES,
    group_replies,
    haproxy_state,
    haproxy_text,
    load,
    views,
)
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from controller.decide import History, Rules
from controller.model import (
    Address,
    AdminState,
    Decision,
    HAProxyInfo,
    HAProxyState,
    MasterView,
    ReplicaInfo,
    SentinelView,
    ServerState,
)
from controller.sentinel_parse import Head, parse_head

T = TypeVar("T")

_SCALE = int(os.environ.get("SENTINEL_HAPROXY_FUZZ_SCALE", "1") or "1")

#: Reproducible and database-free: the same examples on every machine and every run.
CI = settings(
    database=None,
    derandomize=_SCALE == 1,
    deadline=None,
    print_blob=_SCALE != 1,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def fuzz(max_examples: int) -> settings:
    """The CI settings with `max_examples` (times SENTINEL_HAPROXY_FUZZ_SCALE)."""
    return settings(CI, max_examples=max_examples * max(1, _SCALE))


# -- garbage ---------------------------------------------------------------------------

HUGE = 10**400  # more digits than a float holds; still fewer than int()'s 4300-digit limit
NUMBERS = st.one_of(
    st.integers(),
    st.sampled_from([0, -1, 1, 65535, 65536, -65536, 2**63, -(2**63), HUGE, -HUGE]),
)
TEXTS = st.one_of(
    st.text(max_size=12),
    st.sampled_from([
        "", " ", "-", "?", "0", "-1", "65536", "6379 ", " 6379", "+6379", "6_379", "1e3", "nan",
        "\uff16\uff13\uff17\uff19",  # fullwidth digits: int() reads them
        "\u0663", "\x00", "\u202e", "\udcff", "ip", "port", "flags", "name", "s_down,o_down",
        "slave,promoted", "master,failover_in_progress", "9" * 400, "9" * 5000, '"', "\n", ";",
    ]),
)
SCALARS = st.one_of(
    st.none(), st.booleans(), NUMBERS, st.floats(), st.binary(max_size=12), TEXTS,
    st.builds(ValueError, TEXTS),  # redis-py hands a refused command back as an exception
)
GARBAGE: st.SearchStrategy[Any] = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=6), inner, max_size=3),
    ),
    max_leaves=8,
)

#: Values a Sentinel field may plausibly hold, and garbage.
FIELD_VALUES = st.one_of(
    GARBAGE,
    NUMBERS.map(str),
    st.sampled_from([
        "127.0.0.2", "127.0.0.3", "::1", "", "?", "ok", "err", "slave", "master", "0", "-1",
        "master,o_down", "master,failover_in_progress", "slave,promoted", "s_down,slave",
        "master,s_down,o_down,failover_in_progress", "send_slaveof_noone",
    ]),
)


# -- mutating RESP2 values -------------------------------------------------------------


def _mutate_list(draw: st.DrawFn, v: list[Any]) -> Any:
    ops = ["garbage", "append", "wrap"]
    if v:
        ops += ["drop", "dup", "truncate", "set_value", "set_value", "tuple", "bytes"]
    if len(v) >= 2:
        ops += ["swap", "drop_pair", "reverse"]
    op = draw(st.sampled_from(tuple(ops)))
    out = list(v)
    i = draw(st.integers(0, max(0, len(v) - 1)))
    if op == "garbage":
        return draw(GARBAGE)
    if op == "append":
        out.append(draw(GARBAGE))
    elif op == "wrap":
        return [v]
    elif op == "drop":
        del out[i]
    elif op == "dup":
        out.insert(i, out[i])
    elif op == "truncate":
        out = out[:i]
    elif op == "set_value":  # a field list's value (odd index), or any item
        j = i | 1 if (i | 1) < len(out) else i
        out[j] = draw(FIELD_VALUES)
    elif op == "tuple":
        return tuple(v)
    elif op == "bytes":  # a field list as bytes, as a connection without decoding gives
        return [x.encode("utf-8", "surrogatepass") if isinstance(x, str) else x for x in v]
    elif op == "swap":
        j = draw(st.integers(0, len(v) - 1))
        out[i], out[j] = out[j], out[i]
    elif op == "drop_pair":
        k = i & ~1
        del out[k:k + 2]
    elif op == "reverse":
        out.reverse()
    return out


def _mutate_str(draw: st.DrawFn, v: str) -> Any:
    op = draw(st.sampled_from(("truncate", "insert", "garbage", "bytes", "field")))
    if op == "truncate":
        return v[: draw(st.integers(0, len(v)))]
    if op == "insert":
        i = draw(st.integers(0, len(v)))
        return v[:i] + draw(TEXTS) + v[i:]
    if op == "bytes":
        return v.encode("utf-8", "surrogatepass")  # not valid UTF-8 either
    if op == "field":
        return draw(FIELD_VALUES)
    return draw(GARBAGE)


def _mutate(draw: st.DrawFn, v: Any, depth: int = 0) -> Any:
    """`v` with one change at a random place inside it."""
    if isinstance(v, list) and v and depth < 6 and draw(st.booleans()):
        i = draw(st.integers(0, len(v) - 1))
        out = list(v)
        out[i] = _mutate(draw, v[i], depth + 1)
        return out
    if isinstance(v, list):
        return _mutate_list(draw, v)
    if isinstance(v, str):
        return _mutate_str(draw, v)
    return draw(GARBAGE)


@st.composite
def mutated(draw: st.DrawFn, value: Any, max_changes: int = 3) -> Any:
    """`value` (a captured RESP2 reply, or a strategy for one) unchanged or with
    1..`max_changes` random changes."""
    if isinstance(value, st.SearchStrategy):
        value = draw(value)
    for _ in range(draw(st.integers(0, max_changes))):
        value = _mutate(draw, value)
    return value


def captured_reply(key: str) -> st.SearchStrategy[Any]:
    """One captured RESP2 reply (`key`: a command as captured) of any Sentinel in any state."""
    return st.sampled_from([
        load(s)["resp2"][sentinel][key] for s in STATES for sentinel in load(s)["sentinels"]
    ])


def captured_groups() -> st.SearchStrategy[tuple[str, Head, list[Any]]]:
    """A captured (sentinel, its head, replies to `group_commands([GROUP])`) of any state."""
    return st.sampled_from([
        (sentinel, captured_head(s, sentinel), group_replies(s, sentinel)) for s in STATES
        for sentinel in load(s)["sentinels"]
    ])


def captured_head(state: str, sentinel: str) -> Head:
    """What the Sentinel says about itself in `state` (INFO sentinel and SENTINEL MYID)."""
    doc = load(state)
    return parse_head(doc["info_text"][sentinel], doc["resp2"][sentinel]["SENTINEL MYID"])


def captured_info_texts() -> st.SearchStrategy[str]:
    return st.sampled_from([load(s)["info_text"][x] for s in STATES for x in load(s)["sentinels"]])


def captured_events() -> st.SearchStrategy[tuple[str, str]]:
    """(channel, text) of every event captured around a failover."""
    events = load("selected")["events"]
    return st.sampled_from(sorted({(str(ch), str(text)) for per in events.values()
                                   for _, ch, text in per}))


# -- mutating text ---------------------------------------------------------------------

TOKENS = st.one_of(
    TEXTS,
    st.sampled_from(["-", "", "0", "1", "2", "5", "-5", "99999999999999999999999", "32", "x y"]),
    st.just("9" * 131_073),  # beyond the csv module's field size limit
)


_TEXT_OPS = st.sampled_from((
    "truncate", "insert", "drop_line", "dup_line", "swap_lines", "token", "token", "crlf", "blank",
))


@st.composite
def mutated_text(
    draw: st.DrawFn, text: str | st.SearchStrategy[str], max_changes: int = 4
) -> str:
    """`text` (or one drawn from a strategy) with 0..`max_changes` line- and token-level
    changes."""
    if isinstance(text, st.SearchStrategy):
        text = draw(text)
    for _ in range(draw(st.integers(0, max_changes))):
        lines = text.split("\n")
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(_TEXT_OPS)
        if op == "truncate":
            text = text[: draw(st.integers(0, len(text)))]
            continue
        if op == "insert":
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(TOKENS) + text[at:]
            continue
        if op == "drop_line":
            del lines[i]
        elif op == "dup_line":
            lines.insert(i, lines[i])
        elif op == "swap_lines":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "token":  # one space- or comma-separated field of a line
            sep = "," if lines[i].count(",") > lines[i].count(" ") else " "
            fields = lines[i].split(sep)
            k = draw(st.integers(0, len(fields) - 1))
            fields[k] = draw(TOKENS)
            lines[i] = sep.join(fields)
        elif op == "crlf":
            lines[i] += "\r"
        elif op == "blank":
            lines.insert(i, "")
        text = "\n".join(lines)
    return text


HAPROXY_CAPTURES = sorted(p.name for p in DATA.glob("haproxy_*.txt"))
# Replies to STATE_BATCH (a targeted batch's reply starts with `show info` too, but has a
# servers state and a stat output per backend).
BATCHES = [n for n in HAPROXY_CAPTURES if haproxy_text(n).startswith("Name: HAProxy")
           and "targeted" not in n]


def batch_parts(name: str) -> tuple[str, str, str]:
    """A captured state batch split into its `show info`, servers state and stat outputs."""
    info, servers, stat = haproxy_text(name).split("\n\n", 2)
    return info, servers, stat


# -- the core's inputs -----------------------------------------------------------------


def _pool() -> list[Address]:
    nodes = {Address.parse(str(a)) for s in ("steady", "selected")
             for a in load(s)["nodes"].values()}
    return sorted(nodes | {Address("10.9.9.9", 6379), Address("127.0.0.2", 6380)})


POOL = _pool()
ADDRS = st.sampled_from(POOL)
EPOCHS = st.one_of(st.integers(-1, 3), st.sampled_from([2**63 - 1, HUGE]))
MASTER_FLAGS = st.frozensets(st.sampled_from([
    "master", "s_down", "o_down", "disconnected", "failover_in_progress", "promoted",
    "master_reboot",
]), max_size=4)
REPLICA_FLAGS = st.frozensets(st.sampled_from([
    "slave", "s_down", "o_down", "disconnected", "promoted", "master",
]), max_size=3)
TIMES_MS = st.one_of(st.integers(-5, 200_000), st.sampled_from([-HUGE, HUGE, 2**63, 0]))


REPLICA_INFOS = st.builds(
    ReplicaInfo,
    addr=ADDRS,
    flags=REPLICA_FLAGS,
    role_reported=st.sampled_from(("slave", "master", "", "?")),
    link_ok=st.booleans(),
    master_addr=st.none() | ADDRS,
    link_down_ms=TIMES_MS,
)

CAPTURED_VIEWS = tuple(v for s in STATES for v in views(s))  # every Sentinel, every state
_CAPTURED_VIEW = st.sampled_from(CAPTURED_VIEWS)
_CAPTURED_MASTER = st.sampled_from(tuple(v.masters[GROUP] for v in CAPTURED_VIEWS))
_SENTINEL = st.sampled_from(tuple(sorted({v.sentinel for v in CAPTURED_VIEWS})))
_MASTER_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "addr": ADDRS,
    "epoch": EPOCHS,
    "flags": MASTER_FLAGS,
    "master_entry_addr": ADDRS,
    "replicas": st.lists(REPLICA_INFOS, max_size=3).map(tuple),
    "failover_state": st.sampled_from(("", "send_slaveof_noone", "wait_promotion")),
    "failover_timeout_ms": TIMES_MS,
}
_MASTER_FIELD_NAMES = st.lists(st.sampled_from(tuple(sorted(_MASTER_FIELDS))), unique=True)


@st.composite
def master_views(draw: st.DrawFn, name: str = GROUP) -> MasterView:
    """A captured MasterView with some fields replaced by random values."""
    changes: dict[str, Any] = {"name": name}
    for key in draw(_MASTER_FIELD_NAMES):
        changes[key] = draw(_MASTER_FIELDS[key])
    return dataclasses.replace(draw(_CAPTURED_MASTER), **changes)


@st.composite
def promoting_views(draw: st.DrawFn, name: str = GROUP) -> MasterView:
    """A failover leader's view mid-promotion: its entry names the master it fails over,
    `failover_in_progress`, and one replica (or, rarely, several) flagged `promoted`."""
    m = draw(master_views(name))
    chosen = draw(REPLICA_INFOS)
    chosen = dataclasses.replace(chosen, flags=chosen.flags | {"promoted"})
    others = draw(st.lists(REPLICA_INFOS, max_size=2))
    return dataclasses.replace(
        m, master_entry_addr=m.addr, flags=m.flags | {"failover_in_progress"},
        replicas=tuple(draw(st.permutations([chosen, *others]))),
    )


_VIEW_KINDS = st.sampled_from(
    ("captured", "mutated", "mutated", "promoting", "error", "tilt", "empty")
)


@st.composite
def sentinel_views(draw: st.DrawFn, groups: tuple[str, ...] = (GROUP,)) -> SentinelView:
    """One Sentinel's view: captured or mutated, a leader mid-promotion, unreachable, in
    TILT, or missing groups."""
    kind = draw(_VIEW_KINDS)
    sentinel = draw(_SENTINEL)
    if kind == "error":
        return SentinelView(sentinel, error=draw(st.text(min_size=1, max_size=20)))
    if kind == "empty":
        return SentinelView(sentinel)
    if kind == "captured":
        v = draw(_CAPTURED_VIEW)
        masters = {g: dataclasses.replace(v.masters[GROUP], name=g) for g in groups}
        return SentinelView(v.sentinel, masters=masters, tilt=v.tilt)
    make = promoting_views if kind == "promoting" else master_views
    masters = {g: draw(make(g)) for g in groups if draw(st.integers(0, 5))}
    tilt = kind == "tilt" or draw(st.integers(0, 9)) == 0
    return SentinelView(sentinel, masters=masters, tilt=tilt)


_STATE_VIEWS = {s: tuple(views(s)) for s in STATES}
# The failover leader's selection window is the rare case that matters most: drawn more.
_FAILOVER_HEAVY_STATES = st.sampled_from((*STATES, "selected", "selected", "promoted"))
_FAILOVER_TIMEOUTS = st.sampled_from((None, None, 10_000, 0, -1, 2**63, HUGE))


@st.composite
def view_lists(draw: st.DrawFn, groups: tuple[str, ...] = (GROUP,)) -> list[SentinelView]:
    """Every Sentinel's views: a captured state's with up to two of them replaced by random
    ones (mostly decided: the interesting case), or 1-5 random views."""
    if draw(st.integers(0, 2)) == 0:
        return draw(st.lists(sentinel_views(groups), min_size=1, max_size=5))
    timeout = draw(_FAILOVER_TIMEOUTS)  # a config value: the same on every Sentinel
    vs = [SentinelView(v.sentinel, {g: dataclasses.replace(
              v.masters[GROUP], name=g,
              failover_timeout_ms=v.masters[GROUP].failover_timeout_ms if timeout is None
              else timeout,
          ) for g in groups}, v.error, v.tilt)
          for v in _STATE_VIEWS[draw(_FAILOVER_HEAVY_STATES)]]
    for i in draw(st.lists(st.integers(0, len(vs) - 1), unique=True, max_size=2)):
        vs[i] = draw(sentinel_views(groups))
    return vs


HISTORIES = st.builds(
    History,
    seen_epoch=EPOCHS,
    readers=st.frozensets(ADDRS, max_size=3),
    promoted=st.none() | ADDRS,
)
RULES = st.builds(Rules, max_link_down_ms=TIMES_MS, early_promotion=st.booleans())


def decisions(name: str, addrs: st.SearchStrategy[Address] = ADDRS) -> st.SearchStrategy[Decision]:
    """Any Decision, consistent or not (plan must stay safe on all of them)."""
    return st.builds(
        Decision,
        name=st.just(name),
        master=st.one_of(addrs, addrs, st.none()),
        epoch=EPOCHS,
        replicas=st.frozensets(addrs, max_size=3),
        fenced=st.booleans(),
        reason=st.text(max_size=10),
        voters=st.integers(0, 5),
        fallback=st.none() | addrs,
        promoting=st.none() | addrs,
        early=st.booleans(),
        failover_timeout_ms=TIMES_MS,
    )


SERVER_NAMES = ("redis1a", "redis1b", "s1", "s2", "s3", "s4")
_ADMIN = st.sampled_from(AdminState)
_SESSIONS = st.sampled_from((0, 0, 1, 7, 2**40))


@st.composite
def servers(
    draw: st.DrawFn, backend: str, addrs: st.SearchStrategy[Address] = ADDRS
) -> dict[str, ServerState]:
    """A backend's servers: addresses from the node pool, often one node's under two names,
    unresolved `-` ones, FQDNs, every admin state, sessions, backup flags."""
    names = draw(st.lists(st.sampled_from(SERVER_NAMES), unique=True, max_size=5))
    out: dict[str, ServerState] = {}
    for name in names:
        twin_of = draw(st.sampled_from(tuple(out))) if out else None
        if twin_of is not None and draw(st.booleans()):  # the same node, under another name
            twin = out[twin_of]
            out[name] = dataclasses.replace(
                twin, name=name, admin=draw(_ADMIN), sessions=draw(_SESSIONS),
                backup=draw(st.booleans()),
            )
            continue
        node = draw(addrs)
        out[name] = ServerState(
            backend=backend,
            name=name,
            addr=(node.host, node.host, node.host, "-", "10.1.1.1")[draw(st.integers(0, 4))],
            port=(node.port, node.port, node.port, 0, -1, 70000)[draw(st.integers(0, 5))],
            admin=draw(_ADMIN),
            op_state=draw(st.integers(0, 3)),
            sessions=draw(_SESSIONS),
            fqdn=("-", "-", node.host, "redis1a.example")[draw(st.integers(0, 3))],
            backup=draw(st.booleans()),
        )
    return out


BACKEND_TEMPLATES = ("{master}_master", "{master}_replicas")


@st.composite
def haproxy_states(
    draw: st.DrawFn, groups: tuple[str, ...] = (GROUP,), addrs: st.SearchStrategy[Address] = ADDRS
) -> HAProxyState:
    """An HAProxy's state: a captured one, or random servers in the groups' backends (some
    backends missing), plus an unrelated backend."""
    if draw(st.integers(0, 3)) == 0:
        return haproxy_state(draw(st.sampled_from(tuple(BATCHES))))
    backends: dict[str, dict[str, ServerState]] = {}
    for g in groups:
        for tpl in BACKEND_TEMPLATES:
            be = tpl.format(master=g)
            if draw(st.integers(0, 7)):
                backends[be] = draw(servers(be, addrs))
    backends["stats"] = draw(servers("stats", addrs))
    return HAProxyState(HAProxyInfo(pid=draw(st.integers(1, 3)), start_time_s=1), backends)


def copy_state(s: HAProxyState) -> HAProxyState:
    return HAProxyState(s.info, {b: dict(srv) for b, srv in s.backends.items()})


def unless(exc: type[BaseException], fn: Callable[..., T], *args: Any) -> T | None:
    """`fn(*args)`, or None when it raises `exc`; any other exception propagates."""
    try:
        return fn(*args)
    except exc as e:
        assert str(e), f"{exc.__name__} without a message"
        return None
