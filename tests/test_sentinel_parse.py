"""controller.sentinel_parse on real Sentinel 7.0 replies (tests/data) and on garbage."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from captured import (
    DATA,
    GROUP,
    STATES,
    A,
    B,
    group_replies,
    load,
    master,
    node,
    raw,
    views,
)

from controller.model import Address
from controller.sentinel_parse import (
    HEAD_COMMANDS,
    Head,
    NotASentinelError,
    SentinelReplyError,
    group_commands,
    parse_addr,
    parse_event,
    parse_groups,
    parse_head,
    parse_info_masters,
    parse_master_view,
    parse_replica,
    parse_tilt,
)


def leader(state: str = "promoted") -> str:
    name: str = load(state)["leader"]
    return name


def entry(state: str, sentinel: str) -> Any:
    """A deep copy of one Sentinel's `SENTINEL MASTERS` entry for the group."""
    return copy.deepcopy(raw(state)[sentinel]["SENTINEL MASTERS"][0])


def replies(state: str, sentinel: str) -> tuple[Any, Any]:
    r = raw(state)[sentinel]
    return (
        copy.deepcopy(r[f"SENTINEL GET-MASTER-ADDR-BY-NAME {GROUP}"]),
        copy.deepcopy(r[f"SENTINEL REPLICAS {GROUP}"]),
    )


FIRST = load("steady")["sentinels"][0]


# -- captured states -------------------------------------------------------------------


@pytest.mark.parametrize("state", STATES)
def test_every_captured_state_parses(state: str) -> None:
    """Every captured reply of every Sentinel parses, and the address is GET-MASTER-ADDR's."""
    doc = load(state)
    vs = views(state)
    assert [v.sentinel for v in vs] == doc["sentinels"]
    for v in vs:
        m = master(v)
        host, port = doc["resp2"][v.sentinel][f"SENTINEL GET-MASTER-ADDR-BY-NAME {GROUP}"]
        assert m.addr == Address(host, int(port))
        assert m.replicas, "every captured state lists at least one replica"


GROUPS_DOC: dict[str, Any] = json.loads((DATA / "sentinel_groups.json").read_text())


def captured_groups(sentinel: str) -> list[Any]:
    """A Sentinel's replies to `group_commands(ASKED, discover=True)`, errors as Exceptions."""
    return [ValueError(r["error"]) if isinstance(r, dict) else r
            for r in GROUPS_DOC["resp2"][sentinel]["groups"]]


def test_head_of_a_real_sentinel_gives_tilt_id_and_every_group() -> None:
    """`INFO sentinel` + `SENTINEL MYID` (captured with two groups): not in TILT, its 40-char
    ID, and both monitored groups from INFO's `masterN:name=` lines."""
    assert HEAD_COMMANDS == [("INFO", "sentinel"), ("SENTINEL", "MYID")]
    for s in GROUPS_DOC["sentinels"]:
        info, myid = GROUPS_DOC["resp2"][s]["head"]
        head = parse_head(info, myid)
        assert head.tilt is False and head.myid == myid and len(myid) == 40
        assert sorted(head.names) == GROUPS_DOC["groups"]
    assert parse_head(info, None).myid == ""  # not allowed to ask: counted by address


def test_group_commands_and_parse_groups_agree_on_order() -> None:
    """The reader asks MASTER, address and replicas (and SENTINELS when discovering) per
    group; the parser reads a real reply in that order: a group the Sentinel does not monitor
    is left out, each monitored one parsed, and the other Sentinels found by run ID."""
    asked = GROUPS_DOC["asked"]
    assert group_commands(["g"]) == [("SENTINEL", "MASTER", "g"),
                                     ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "g"),
                                     ("SENTINEL", "REPLICAS", "g")]
    assert len(group_commands(asked, discover=True)) == 4 * len(asked)
    ids = {s: GROUPS_DOC["resp2"][s]["head"][1] for s in GROUPS_DOC["sentinels"]}
    nodes = GROUPS_DOC["nodes"]
    for s in GROUPS_DOC["sentinels"]:
        head = Head(False, ids[s], ("redis1", "redis2"))
        view, found = parse_groups(s, asked, captured_groups(s), head, discover=True)
        assert set(view.masters) == {"redis1", "redis2"} and view.group_errors == {}
        assert str(view.masters["redis1"].addr) == nodes["redis1a"]
        assert str(view.masters["redis2"].addr) == nodes["redis2a"]
        assert view.masters["redis1"].other_sentinels == 2 and view.myid == ids[s]
        assert {runid for _, runid in found} == set(ids.values()) - {ids[s]}


def test_whole_list_reads_the_master_entries_from_sentinel_masters() -> None:
    """For an ACL user without `sentinel|master` the entries come from one `SENTINEL
    MASTERS` (captured), then address and replicas per group; the view is the same."""
    assert group_commands([GROUP, "x"], whole_list=True) == [
        ("SENTINEL", "MASTERS"),
        ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", GROUP), ("SENTINEL", "REPLICAS", GROUP),
        ("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "x"), ("SENTINEL", "REPLICAS", "x")]
    r = raw("steady")[FIRST]
    replies_ = [r["SENTINEL MASTERS"], r[f"SENTINEL GET-MASTER-ADDR-BY-NAME {GROUP}"],
                r[f"SENTINEL REPLICAS {GROUP}"], None, ValueError("ERR No such master")]
    head = Head(False, "", (GROUP,))
    view, _ = parse_groups(FIRST, [GROUP, "x"], replies_, head, whole_list=True)
    assert set(view.masters) == {GROUP} and view.group_errors == {}
    assert view.masters[GROUP] == next(v for v in views("steady")
                                       if v.sentinel == FIRST).masters[GROUP]


def test_sentinel_master_reply_has_the_fields_of_a_sentinel_masters_entry() -> None:
    """`SENTINEL MASTER g` (captured) carries the same fields as a `SENTINEL MASTERS` entry
    (tests/data/sentinel_*.json), which the unit tests' views are built from."""
    s = GROUPS_DOC["sentinels"][0]
    single = GROUPS_DOC["resp2"][s]["groups"][0]
    assert set(single[::2]) == set(entry("steady", FIRST)[::2])


def test_parse_groups_keeps_a_bad_group_to_itself() -> None:
    """A group whose reply does not parse, or that the Sentinel refuses for another reason
    than `No such master`, costs only that group (`group_errors`), not the Sentinel's vote for
    the others."""
    s = GROUPS_DOC["sentinels"][0]
    replies_ = captured_groups(s)
    asked = GROUPS_DOC["asked"]
    bad = copy.deepcopy(replies_)
    bad[0] = bad[0][:-1]  # redis1's MASTER entry loses one item
    bad[8] = ValueError("NOPERM this user has no permissions")  # redis2's MASTER refused
    view, _ = parse_groups(s, asked, bad, Head(False, "", ()), discover=True)
    assert view.masters == {}
    assert "odd number of items" in view.group_errors["redis1"]
    assert "NOPERM" in view.group_errors["redis2"]
    with pytest.raises(SentinelReplyError, match="expected 12 replies"):
        parse_groups(s, asked, replies_[:-1], Head(False, "", ()), discover=True)


def test_info_master_lines_give_the_names() -> None:
    """INFO's master lines give every name, one with a comma included; a line that is not
    `masterN:name=...,status=` is refused."""
    text = "sentinel_tilt:0\r\nmaster0:name=a,b,status=ok,address=1.2.3.4:1,slaves=1\r\n"
    assert parse_info_masters(text) == ["a,b"]
    with pytest.raises(SentinelReplyError, match="bad master line"):
        parse_info_masters("masterX:name=a,status=ok")


@pytest.mark.parametrize("keep", [0, 1, 2, 4])
def test_parse_groups_with_too_few_or_too_many_replies_raises(keep: int) -> None:
    """Replies cut short (or one too many) for the groups asked are refused with both counts,
    not an IndexError (found by tests/test_properties_parse.py)."""
    replies_ = [*group_replies("steady", FIRST), None]
    with pytest.raises(SentinelReplyError, match=f"expected 3 replies, got {keep}"):
        parse_groups(FIRST, [GROUP], replies_[:keep], Head(False, "", (GROUP,)))


def test_steady_state_values() -> None:
    """Steady: the first master at epoch 0, flags just `master`, its replica healthy."""
    for v in views("steady"):
        m = master(v)
        assert (m.addr, m.master_entry_addr, m.epoch) == (node(A), node(A), 0)
        assert m.flags == frozenset({"master"})
        assert not m.odown and not v.tilt
        (r,) = m.replicas
        assert r.addr == node(B)
        assert (r.role_reported, r.link_ok, r.master_addr) == ("slave", True, node(A))
        assert r.healthy_for(node(A))


def test_selected_leader_flags_replica_promoted_while_every_sentinel_names_old_master() -> None:
    """Selected: mid-failover the leader lists the chosen replica `promoted`, yet every Sentinel
    (leader included) still names the old master, whose entry the leader flags failing over."""
    doc = load("selected")
    old, new = (Address(h, int(p)) for h, _, p in
                (str(doc["nodes"][n]).rpartition(":") for n in (A, B)))
    for v in views("selected"):
        m = master(v)
        assert (m.addr, m.master_entry_addr, m.epoch) == (old, old, 0)
        (r,) = m.replicas
        assert r.addr == new
        is_leader = v.sentinel == doc["leader"]
        assert ("promoted" in r.flags) == is_leader
        assert m.failing_over == is_leader


def test_dead_replica_is_s_down_and_not_healthy() -> None:
    """A SIGKILLed replica is listed s_down/disconnected and is not healthy for its master."""
    for v in views("replica_dead"):
        (r,) = master(v).replicas
        assert {"s_down", "disconnected"} <= r.flags
        assert not r.healthy_for(node(A))


def test_killed_master_o_down_on_at_least_one_sentinel() -> None:
    """After SIGKILL a Sentinel flags the master o_down on its own address: `odown` is true."""
    odown = [v.sentinel for v in views("master_down") if master(v).odown]
    assert odown
    for v in views("master_down"):
        assert "s_down" in master(v).flags
        assert master(v).addr == node(A)


def test_leader_mid_failover_entry_keeps_old_ip_with_new_epoch() -> None:
    """The leader after +promoted-slave: new address and epoch, entry still the old o_down ip."""
    by_name = {v.sentinel: master(v) for v in views("promoted")}
    m = by_name.pop(leader())
    assert m.addr == node(B)
    assert m.master_entry_addr == node(A)
    assert m.epoch == 1
    assert {"o_down", "failover_in_progress"} <= m.flags
    assert not m.odown, "flags describe the old entry address, not the promoted master"
    for other in by_name.values():  # the two others had not heard of it yet
        assert (other.addr, other.epoch) == (node(A), 0)


def test_returning_old_master_is_a_replica_reporting_role_master() -> None:
    """The old master restarted as master: flags `slave` only, role master, link err, host ?."""
    for v in views("old_master_returned"):
        (r,) = master(v).replicas
        assert r.addr == node(A)
        assert r.flags == frozenset({"slave"})
        assert (r.role_reported, r.link_ok, r.master_addr) == ("master", False, None)
        assert not r.healthy_for(node(B))


def test_tilt_flag_from_info_sentinel() -> None:
    """Only the Sentinel that was stopped > 2 s reports TILT, and it is not usable."""
    doc = load("tilt")
    tilted = [v.sentinel for v in views("tilt") if v.tilt]
    assert tilted == [doc["sentinels"][2]]
    assert not views("tilt")[2].usable
    assert parse_tilt(doc["info_text"][doc["sentinels"][2]]) is True
    assert parse_tilt(doc["info_text"][doc["sentinels"][0]]) is False


# -- garbage ---------------------------------------------------------------------------


def test_unknown_master_nil_address_raises() -> None:
    """GET-MASTER-ADDR-BY-NAME's nil for an unknown name is refused as 'unknown master'."""
    nil = load("steady")["unknown_master"]["resp2"]["SENTINEL GET-MASTER-ADDR-BY-NAME nosuch"]
    assert nil is None
    _, repl = replies("steady", FIRST)
    with pytest.raises(SentinelReplyError, match="unknown master"):
        parse_master_view(GROUP, nil, entry("steady", FIRST), repl)


def test_odd_field_list_raises() -> None:
    """A RESP2 field list with an odd number of items is refused, naming the count."""
    e = entry("steady", FIRST)
    addr, repl = replies("steady", FIRST)
    with pytest.raises(SentinelReplyError, match=rf"odd number of items .*\({len(e) - 1}\)"):
        parse_master_view(GROUP, addr, e[:-1], repl)


@pytest.mark.parametrize("field", ["ip", "port", "flags", "config-epoch"])
def test_missing_field_raises_naming_it(field: str) -> None:
    """A master entry without a required field is refused, naming the field and the group."""
    e = entry("steady", FIRST)
    i = e.index(field)
    del e[i : i + 2]
    addr, repl = replies("steady", FIRST)
    with pytest.raises(SentinelReplyError, match=f"master '{GROUP}'.*field '{field}' missing"):
        parse_master_view(GROUP, addr, e, repl)


def test_replica_missing_field_raises_naming_it() -> None:
    """A replica entry without `ip` is refused, naming the replica."""
    _, repl = replies("steady", FIRST)
    i = repl[0].index("ip")
    del repl[0][i : i + 2]
    addr, _ = replies("steady", FIRST)
    with pytest.raises(SentinelReplyError, match=r"replica #0: field 'ip' missing"):
        parse_master_view(GROUP, addr, entry("steady", FIRST), repl)


@pytest.mark.parametrize("bad", ["abc", "", "70000", "0"])
def test_bad_port_raises(bad: str) -> None:
    """A non-numeric or out-of-range port in an address, entry or replica is refused."""
    addr, repl = replies("steady", FIRST)
    with pytest.raises(SentinelReplyError, match="port"):
        parse_addr([addr[0], bad], "address")
    e = entry("steady", FIRST)
    e[e.index("port") + 1] = bad
    with pytest.raises(SentinelReplyError, match="port"):
        parse_master_view(GROUP, addr, e, repl)
    r = copy.deepcopy(repl[0])
    r[r.index("port") + 1] = bad
    with pytest.raises(SentinelReplyError, match="port"):
        parse_replica(r, "replica")


def test_non_numeric_epoch_raises_naming_the_field() -> None:
    """A config-epoch that is not a number is refused with the field name and value."""
    addr, repl = replies("steady", FIRST)
    e = entry("steady", FIRST)
    e[e.index("config-epoch") + 1] = "one"
    with pytest.raises(SentinelReplyError, match="'config-epoch'='one' is not a number"):
        parse_master_view(GROUP, addr, e, repl)


def test_entry_for_another_master_raises() -> None:
    """An entry whose `name` is another group is refused (replies paired wrongly)."""
    addr, repl = replies("steady", FIRST)
    with pytest.raises(SentinelReplyError, match=f"reply is for '{GROUP}'"):
        parse_master_view("redis2", addr, entry("steady", FIRST), repl)


@pytest.mark.parametrize(
    "bad", [[], ["127.0.0.2"], ["127.0.0.2", "1", "2"], "127.0.0.2:6379", ["", "6379"], 5]
)
def test_malformed_address_raises(bad: Any) -> None:
    """Anything but a [host, port] pair with a non-empty host is refused."""
    with pytest.raises(SentinelReplyError):
        parse_addr(bad, "address")


def test_shapes_that_are_not_lists_raise() -> None:
    """Replies of the wrong type (string, int, error text) are refused, not misread."""
    addr, _ = replies("steady", FIRST)
    with pytest.raises(SentinelReplyError, match="replicas reply is not a list"):
        parse_master_view(GROUP, addr, entry("steady", FIRST), "ERR no such master")
    with pytest.raises(SentinelReplyError, match="expected a field list"):
        parse_master_view(GROUP, addr, 42, [])
    view, found = parse_groups(FIRST, [GROUP], [entry("steady", FIRST), addr, [], "OK"],
                               Head(False, "", ()), discover=True)
    assert GROUP in view.masters and found == [] and view.group_errors == {}


def test_info_without_tilt_field_raises() -> None:
    """`INFO` that is not a Sentinel's (no sentinel_tilt) is refused; so is a reply that is
    not text."""
    text = load("steady")["info_text"][FIRST]
    with pytest.raises(NotASentinelError, match="no sentinel_tilt"):
        parse_tilt(text.replace("sentinel_tilt:", "sentinel_tilx:"))
    with pytest.raises(SentinelReplyError, match="unexpected reply type"):
        parse_tilt(0)


# -- events ----------------------------------------------------------------------------

# Real texts from the failover transcript in the facts file (B.1), as (channel, data).
EVENTS = [
    ("+switch-master", "mymaster 127.0.0.1 26531 127.0.0.1 26533", "mymaster", True),
    ("+sdown", "master mymaster 127.0.0.1 26531", "mymaster", True),
    ("+odown", "master mymaster 127.0.0.1 26531 #quorum 2/2", "mymaster", True),
    ("+new-epoch", "1", None, False),  # logged in the timeline only (TIMELINE_EVENTS)
    ("+tilt", "#tilt mode entered", None, True),
    ("+vote-for-leader", "1ce51fd96d63567819d9a31470ba1d4b6d674ef2 1", None, False),
    (
        "+promoted-slave",
        "slave 127.0.0.1:26533 127.0.0.1 26533 @ mymaster 127.0.0.1 26531",
        "mymaster",
        True,
    ),
    (
        "+config-update-from",
        "sentinel 1ce51fd96d63567819d9a31470ba1d4b6d674ef2 127.0.0.1 26535 @ mymaster "
        "127.0.0.1 26531",
        "mymaster",
        False,  # logged in the timeline only: its `+switch-master` starts the pass
    ),
    (
        "-role-change",
        "slave 127.0.0.1:26531 127.0.0.1 26531 @ mymaster 127.0.0.1 26533 "
        "new reported role is master",
        "mymaster",
        True,
    ),
    (
        "+failover-state-wait-promotion",
        "slave 127.0.0.1:26533 127.0.0.1 26533 @ mymaster 127.0.0.1 26531",
        "mymaster",
        True,
    ),
    ("+try-failover", "master mymaster 127.0.0.1 26531", "mymaster", True),
    ("+vote-for-leader", "1ce51fd96d63567819d9a31470ba1d4b6d674ef2 1", None, False),
]


@pytest.mark.parametrize(("channel", "data", "group", "relevant"), EVENTS)
def test_parse_event_on_real_texts(
    channel: str, data: str, group: str | None, relevant: bool
) -> None:
    """Real event texts give the channel, the group they name (if any) and relevance."""
    ev = parse_event(channel, data)
    assert (ev.channel, ev.master, ev.text, ev.relevant) == (channel, group, data, relevant)


def test_parse_event_names_the_instance_of_instance_events() -> None:
    """`<type> <name> <ip> <port> @ ...` events name their instance's address; others none."""
    ev = parse_event("+failover-state-send-slaveof-noone",
                     "slave 127.0.0.3:26533 127.0.0.3 26533 @ mymaster 127.0.0.2 26531")
    assert ev.instance == Address("127.0.0.3", 26533)
    assert parse_event("+try-failover", "master mymaster 127.0.0.1 26531").instance is None
    assert parse_event("+sdown", "slave x 127.0.0.3 notaport @ m 127.0.0.2 1").instance is None


def test_parse_event_accepts_bytes_as_redis_py_delivers_them() -> None:
    """Channel and data as bytes (a pmessage from redis-py) parse like str."""
    ev = parse_event(b"+reset-master", b"master mymaster 127.0.0.1 23921")
    assert (ev.channel, ev.master, ev.relevant) == ("+reset-master", "mymaster", True)


@pytest.mark.parametrize(
    ("channel", "data", "problem"),
    [
        ("", "master mymaster 127.0.0.1 1", "bad channel"),
        ("+sdown\n", "master mymaster 127.0.0.1 1", "bad channel"),
        ("x" * 65, "master mymaster 127.0.0.1 1", "bad channel"),
        ("+switch-master", "mymaster 127.0.0.1 26531", "expected 5 words"),
        ("+switch-master", "", "expected 5 words"),
        ("+slave", "slave 127.0.0.1:1 127.0.0.1 1 @", "nothing after '@'"),
    ],
)
def test_parse_event_garbage_raises(channel: Any, data: str, problem: str) -> None:
    """Malformed events are refused, naming the problem."""
    with pytest.raises(SentinelReplyError, match=problem):
        parse_event(channel, data)


def test_switch_master_names_the_new_master_and_refuses_a_bad_port() -> None:
    """`+switch-master` carries the new master's address, parsed; a port that is not one
    makes the event bad (a clear error), not a pass about garbage."""
    ev = parse_event("+switch-master", "redis1 127.0.0.2 6379 127.0.0.3 6380")
    assert ev.master == "redis1" and ev.switched_to == Address("127.0.0.3", 6380)
    assert parse_event("+sdown", "master redis1 127.0.0.2 6379").switched_to is None
    with pytest.raises(SentinelReplyError, match="port 'x' is not a number"):
        parse_event("+switch-master", "redis1 127.0.0.2 6379 127.0.0.3 x")


def test_a_sentinel_repeating_its_head_reply_is_not_parsed_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A quiet Sentinel sends the same `INFO sentinel` every full pass: the reader parses it
    once and reuses that head; a changed reply (a group added) is parsed again."""
    from controller import sentinel as sentinel_mod
    from controller.sentinel import Auth, SentinelReader

    calls: list[str] = []
    real = parse_head

    def counting(info: Any, myid: Any) -> Head:
        calls.append(info)
        return real(info, myid)

    monkeypatch.setattr(sentinel_mod, "parse_head", counting)
    s = GROUPS_DOC["sentinels"][0]
    info, myid = GROUPS_DOC["resp2"][s]["head"]
    reader = SentinelReader([Address.parse(s)], Auth(), [])
    try:
        conn = next(iter(reader._conns.values()))
        for reply in (info, (info + " ")[:-1], info + "master9:name=extra,status=ok\r\n"):
            conn.head = reader._head(conn, [reply, myid])
        assert len(calls) == 2  # the equal copy was not parsed
        assert conn.head is not None and "extra" in conn.head.names
    finally:
        reader.close()
