"""Property-based tests of the edge parsers (controller.sentinel_parse, controller.haproxy_parse).

Fed with captured real replies (tests/data) that are mutated, truncated and filled with
garbage, every parser either returns a well-typed frozen value or raises its own
ReplyError with a message; never another exception, which the adapters would not catch (a
pass would then fail for every group, not just drop one bad Sentinel or HAProxy reply).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from captured import GROUP, STATES, haproxy_text, load
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    BATCHES,
    GARBAGE,
    HAPROXY_CAPTURES,
    TEXTS,
    batch_parts,
    captured_events,
    captured_groups,
    captured_info_texts,
    captured_reply,
    fuzz,
    mutated,
    mutated_text,
    unless,
)

from controller.haproxy_parse import (
    HAProxyReplyError,
    parse_info,
    parse_servers_state,
    parse_stat,
    parse_state_batch,
    split_replies,
)
from controller.model import (
    Address,
    AdminState,
    HAProxyInfo,
    MasterView,
    ReplicaInfo,
    SentinelView,
    ServerState,
)
from controller.sentinel_parse import (
    Head,
    SentinelEvent,
    SentinelReplyError,
    parse_addr,
    parse_event,
    parse_groups,
    parse_info_masters,
    parse_master_view,
    parse_replica,
    parse_tilt,
)

ADDR_KEY = f"SENTINEL GET-MASTER-ADDR-BY-NAME {GROUP}"
REPLICAS_KEY = f"SENTINEL REPLICAS {GROUP}"


def frozen(value: object, hashable: bool = True) -> None:
    """`value` is a frozen dataclass instance (and hashable, when all its fields are)."""
    assert dataclasses.is_dataclass(value) and not isinstance(value, type)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, dataclasses.fields(value)[0].name, None)
    if hashable:
        hash(value)


def check_address(a: object) -> None:
    assert isinstance(a, Address)
    frozen(a)
    assert type(a.host) is str and type(a.port) is int and 0 < a.port < 65536, a


def check_replica(r: object) -> None:
    assert isinstance(r, ReplicaInfo)
    frozen(r)
    check_address(r.addr)
    assert isinstance(r.flags, frozenset) and all(type(f) is str and f for f in r.flags)
    assert type(r.role_reported) is str and type(r.link_ok) is bool
    assert type(r.link_down_ms) is int
    if r.master_addr is not None:
        check_address(r.master_addr)


def check_master_view(m: object, name: str) -> None:
    assert isinstance(m, MasterView)
    frozen(m)
    assert m.name == name
    check_address(m.addr)
    check_address(m.master_entry_addr)
    assert type(m.epoch) is int and type(m.failover_timeout_ms) is int
    assert isinstance(m.flags, frozenset) and all(type(f) is str for f in m.flags)
    assert isinstance(m.replicas, tuple)
    for r in m.replicas:
        check_replica(r)
    assert type(m.failover_state) is str
    assert type(m.odown) is bool and type(m.failing_over) is bool
    assert m.promoting is None or m.promoting in {r.addr for r in m.replicas}


# -- Sentinel --------------------------------------------------------------------------


@fuzz(300)
@given(st.one_of(mutated(captured_reply(ADDR_KEY)), GARBAGE))
def test_parse_addr_gives_an_address_or_a_sentinel_reply_error(raw: Any) -> None:
    """GET-MASTER-ADDR replies, mutated or garbage: an Address with a port in range, or
    SentinelReplyError."""
    a = unless(SentinelReplyError, parse_addr, raw, "master 'redis1' address")
    if a is not None:
        check_address(a)
        assert a.host


REPLICA_ENTRIES = [r for s in STATES for x in load(s)["sentinels"]
                   for r in load(s)["resp2"][x][REPLICAS_KEY]]


@fuzz(300)
@given(st.one_of(mutated(st.sampled_from(REPLICA_ENTRIES)), GARBAGE))
def test_parse_replica_gives_a_replica_or_a_sentinel_reply_error(raw: Any) -> None:
    """SENTINEL REPLICAS entries, mutated or garbage: a well-typed ReplicaInfo, or
    SentinelReplyError."""
    r = unless(SentinelReplyError, parse_replica, raw, "replica #0")
    if r is not None:
        check_replica(r)


@st.composite
def master_view_inputs(draw: st.DrawFn) -> tuple[str, Any, Any, Any]:
    _, _head, replies = draw(captured_groups())
    entry, addr, replicas = replies
    name = draw(st.sampled_from([GROUP, GROUP, "other"]) | st.text(max_size=8))
    return (name, draw(mutated(addr, 2) | GARBAGE), draw(mutated(entry, 3) | GARBAGE),
            draw(mutated(replicas, 3) | GARBAGE))


@fuzz(300)
@given(master_view_inputs())
def test_parse_master_view_gives_a_view_or_a_sentinel_reply_error(
    args: tuple[str, Any, Any, Any],
) -> None:
    """The three replies of one group, each mutated or garbage: a well-typed MasterView of
    that group, or SentinelReplyError."""
    name = args[0]
    m = unless(SentinelReplyError, parse_master_view, *args)
    if m is not None:
        check_master_view(m, name)


#: INFO sentinel text as captured, mutated, as bytes, or garbage.
INFO_TEXTS = st.one_of(
    mutated_text(captured_info_texts()), captured_info_texts().map(str.encode), GARBAGE,
)


@fuzz(200)
@given(INFO_TEXTS)
def test_parse_info_masters_gives_names_or_a_sentinel_reply_error(raw: Any) -> None:
    """INFO sentinel text, mutated, as bytes, or garbage: the group names (none empty), or
    SentinelReplyError."""
    names = unless(SentinelReplyError, parse_info_masters, raw)
    if names is not None:
        assert isinstance(names, list) and all(type(n) is str and n for n in names)


@fuzz(200)
@given(INFO_TEXTS)
def test_parse_tilt_gives_a_bool_or_a_sentinel_reply_error(raw: Any) -> None:
    """INFO sentinel text, mutated, as bytes, or garbage: a bool, or SentinelReplyError."""
    tilt = unless(SentinelReplyError, parse_tilt, raw)
    assert tilt is None or type(tilt) is bool


@st.composite
def group_reads(draw: st.DrawFn) -> tuple[str, Head, list[str], list[Any]]:
    """A captured group read's replies with some replies mutated or refused, and the list
    itself cut short or extended; the group names asked for, sometimes others."""
    sentinel, head, replies = draw(captured_groups())
    names = draw(st.sampled_from([[GROUP], [GROUP], [GROUP, "nosuch"], [], ["nosuch", GROUP]])
                 | st.lists(st.text(max_size=6), max_size=3))
    out: list[Any] = list(replies)
    nosuch = ValueError("ERR No such master with that name")
    while len(out) < 3 * len(names):  # unmonitored groups: refused entry, nil address
        out += [nosuch, None, nosuch]
    out = [draw(mutated(r, 2)) if draw(st.integers(0, 2)) == 0 else r for r in out]
    op = draw(st.sampled_from(["keep", "keep", "keep", "truncate", "append", "refuse"]))
    if op == "truncate":
        out = out[: draw(st.integers(0, len(out)))]
    elif op == "append":
        out += draw(st.lists(GARBAGE, min_size=1, max_size=2))
    elif op == "refuse":
        out[draw(st.integers(0, len(out) - 1))] = ValueError("ERR refused")
    return sentinel, head, names, out


@fuzz(300)
@given(group_reads())
def test_parse_groups_gives_a_view_or_a_sentinel_reply_error(
    args: tuple[str, Head, list[str], list[Any]],
) -> None:
    """One Sentinel's replies about some groups, mutated, refused, cut short or too many: a
    view of (some of) the groups asked for, or SentinelReplyError."""
    sentinel, head, names, replies = args
    out = unless(SentinelReplyError, parse_groups, sentinel, names, replies, head)
    if out is None:
        return
    view, found = out
    assert isinstance(view, SentinelView) and view.sentinel == sentinel
    assert view.error is None and type(view.tilt) is bool and found == []
    assert set(view.masters) | set(view.group_errors) <= set(names)
    for name, m in view.masters.items():
        check_master_view(m, name)


@fuzz(300)
@given(
    st.one_of(captured_events().map(lambda e: e[0]), TEXTS, GARBAGE),
    st.one_of(mutated_text(captured_events().map(lambda e: e[1])), TEXTS, GARBAGE),
)
def test_parse_event_gives_an_event_or_a_sentinel_reply_error(channel: Any, data: Any) -> None:
    """Pub/sub messages, captured and mutated or garbage: an event whose channel is a short
    printable name, or SentinelReplyError."""
    ev = unless(SentinelReplyError, parse_event, channel, data)
    if ev is not None:
        assert isinstance(ev, SentinelEvent)
        frozen(ev)
        assert type(ev.channel) is str and 0 < len(ev.channel) <= 64 and ev.channel.isprintable()
        assert type(ev.text) is str and (ev.master is None or type(ev.master) is str)
        assert type(ev.relevant) is bool


# -- HAProxy ---------------------------------------------------------------------------


def check_server(s: object, backend: str, name: str) -> None:
    assert isinstance(s, ServerState)
    frozen(s)
    assert (s.backend, s.name) == (backend, name)
    assert type(s.addr) is str and type(s.fqdn) is str and type(s.port) is int
    assert isinstance(s.admin, AdminState) and type(s.op_state) is int
    assert type(s.sessions) is int and type(s.backup) is bool


ANY_TEXT = st.text(max_size=200)


@fuzz(200)
@given(st.one_of(mutated_text(st.sampled_from([batch_parts(n)[0] for n in BATCHES])), ANY_TEXT))
def test_parse_info_gives_an_identity_or_an_haproxy_reply_error(text: str) -> None:
    """`show info`, mutated or random: a frozen HAProxyInfo with integer Pid and start time,
    or HAProxyReplyError."""
    info = unless(HAProxyReplyError, parse_info, text)
    if info is not None:
        assert isinstance(info, HAProxyInfo)
        frozen(info)
        assert type(info.pid) is int and type(info.start_time_s) is int
        assert type(info.stopping) is bool


@fuzz(300)
@given(st.one_of(mutated_text(st.sampled_from([batch_parts(n)[1] for n in BATCHES])), ANY_TEXT))
def test_parse_servers_state_gives_servers_or_an_haproxy_reply_error(text: str) -> None:
    """`show servers state`, mutated or random: well-typed servers keyed by backend and
    name, or HAProxyReplyError."""
    backends = unless(HAProxyReplyError, parse_servers_state, text)
    for be, srvs in (backends or {}).items():
        for name, s in srvs.items():
            check_server(s, be, name)


STATS = [batch_parts(n)[2] for n in BATCHES] + [haproxy_text("haproxy_admin_bits_stat_all.txt")]


@fuzz(300)
@given(st.one_of(mutated_text(st.sampled_from(STATS)), ANY_TEXT))
def test_parse_stat_gives_sessions_or_an_haproxy_reply_error(text: str) -> None:
    """`show stat` CSV, mutated or random (huge fields, stray quotes): integer sessions and
    a backup flag per server, or HAProxyReplyError."""
    stats = unless(HAProxyReplyError, parse_stat, text)
    for (be, sv), (scur, backup) in (stats or {}).items():
        assert type(be) is str and type(sv) is str and sv not in ("FRONTEND", "BACKEND")
        assert type(scur) is int and type(backup) is bool


@fuzz(300)
@given(st.one_of(mutated_text(st.sampled_from([haproxy_text(n) for n in BATCHES]), 5), ANY_TEXT))
def test_parse_state_batch_gives_a_state_or_an_haproxy_reply_error(text: str) -> None:
    """The state batch reply, mutated or random: a frozen HAProxyState of well-typed servers,
    or HAProxyReplyError."""
    state = unless(HAProxyReplyError, parse_state_batch, text)
    if state is not None:
        frozen(state, hashable=False)  # frozen, holding dicts of frozen servers
        frozen(state.info)
        for be, srvs in state.backends.items():
            for name, s in srvs.items():
                check_server(s, be, name)


@fuzz(300)
@given(
    st.one_of(mutated_text(st.sampled_from([haproxy_text(n) for n in HAPROXY_CAPTURES])),
              ANY_TEXT, st.lists(st.sampled_from(["", "x", "No such server."])).map(
                  lambda ls: "\n".join(ls))),
    st.integers(-2, 12),
)
def test_split_replies_gives_count_outputs_or_an_haproxy_reply_error(text: str, count: int) -> None:
    """Any reply text and command count: exactly `count` outputs, or HAProxyReplyError."""
    outputs = unless(HAProxyReplyError, split_replies, text, count)
    if outputs is not None:
        assert len(outputs) == count and all(type(o) is str for o in outputs)
