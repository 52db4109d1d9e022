"""controller.haproxy_parse on real HAProxy 2.6 Runtime API output (tests/data) and garbage."""

from __future__ import annotations

import json
from typing import Any

import pytest
from captured import DATA, haproxy_state, haproxy_text

from controller.haproxy_parse import (
    HAProxyReplyError,
    parse_info,
    parse_old_workers,
    parse_servers_state,
    parse_sessions,
    parse_stat,
    split_replies,
)
from controller.model import AdminState, admin_from_bits

BATCH = "haproxy_state_batch.txt"
BITS = "haproxy_admin_bits_state.txt"


def parts(name: str) -> list[str]:
    """info, servers state and stat outputs of a captured state batch."""
    return split_replies(haproxy_text(name), 3)


# -- show info -------------------------------------------------------------------------


def test_info_gives_pid_start_time_and_version() -> None:
    """`show info` gives the identity of the process: Pid, Start_time_sec, stopping."""
    info = parse_info(parts(BATCH)[0])
    assert info.pid == 2638
    assert info.start_time_s == 1795615658
    assert info.stopping is False


def test_info_stopping_flag() -> None:
    """`Stopping: 1` (an old worker after a reload) is reported as stopping."""
    text = parts(BATCH)[0].replace("\nStopping: 0\n", "\nStopping: 1\n")
    assert parse_info(text).stopping is True


def test_info_reads_only_its_fields_wherever_they_are() -> None:
    """Only Pid, Start_time_sec and Stopping are read, from any line: blanks around the colon
    count for nothing, a field given twice counts with its last value, a similar name
    (`Pid_max`) is not the field."""
    text = "Name: HAProxy\nPid_max: 9\n  Pid :  41\nStart_time_sec: 5\nPid: 42\n"
    info = parse_info(text)
    assert (info.pid, info.start_time_s, info.stopping) == (42, 5, False)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no Pid field"),
        ("Permission denied\n", "no Pid field"),
        ("Name: HAProxy\nPid: abc\n", "bad number"),
    ],
)
def test_info_garbage_raises(text: str, problem: str) -> None:
    """Output without a numeric Pid is refused, naming the problem."""
    with pytest.raises(HAProxyReplyError, match=problem):
        parse_info(text)


# -- show servers state ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("bits", "state"),
    [
        (0x00, AdminState.READY),
        (0x01, AdminState.MAINT),  # FMAINT: `state maint` from the CLI
        (0x02, AdminState.MAINT),  # IMAINT: tracked server in maint
        (0x04, AdminState.READY),  # CMAINT alone: config `disabled`, then `state ready`
        (0x05, AdminState.MAINT),  # config `disabled` as started
        (0x08, AdminState.DRAIN),  # FDRAIN
        (0x0C, AdminState.DRAIN),  # config `disabled`, ready, then drain
        (0x09, AdminState.MAINT),  # maint wins over drain
        (0x10, AdminState.DRAIN),  # IDRAIN
        (0x20, AdminState.MAINT),  # RMAINT: unresolved address
        (0x40, AdminState.MAINT),  # HMAINT
    ],
)
def test_admin_bits(bits: int, state: AdminState) -> None:
    """srv_admin_state bits map to maint/drain/ready; 4 (config disabled) alone is ready."""
    assert admin_from_bits(bits) is state


def test_servers_state_admin_bits_from_live_haproxy() -> None:
    """Each captured admin state reads as what HAProxy routes: 5/1/32 maint, 4/0 ready, 8 drain."""
    servers = parse_servers_state(parts(BITS)[1])
    g = servers["g_master"]
    assert {n: s.admin for n, s in g.items()} == {
        "n1": AdminState.MAINT,  # 1
        "n2": AdminState.READY,  # 4
        "n3": AdminState.READY,  # 0
        "n4": AdminState.DRAIN,  # 8
        "n5": AdminState.MAINT,  # 5
        "n6": AdminState.MAINT,  # 32, unresolved
        "n7": AdminState.READY,  # 0, FQDN
    }
    assert {n: s.admin for n, s in servers["g_replicas"].items()} == {
        "n1": AdminState.MAINT,
        "n2": AdminState.MAINT,
    }
    assert all(s.sessions == 0 for s in g.values()), "servers state has no session counts"


def test_servers_state_addresses_fqdn_and_op_state() -> None:
    """Address, port, FQDN and op state come from their columns; an unresolved server is `-`."""
    g = parse_servers_state(parts(BITS)[1])["g_master"]
    port = g["n1"].port
    assert (g["n1"].addr, g["n1"].fqdn, g["n1"].op_state) == ("127.0.0.2", "-", 0)
    assert (g["n3"].addr, g["n3"].op_state) == ("127.0.0.4", 2)
    assert (g["n6"].addr, g["n6"].fqdn, g["n6"].port) == ("-", "redis-gone.invalid", port)
    assert (g["n7"].addr, g["n7"].fqdn, g["n7"].port) == ("127.0.0.1", "localhost", port)


def test_servers_state_of_two_backends() -> None:
    """The batch capture gives both backends of group `a` keyed by backend then server."""
    servers = parse_servers_state(parts(BATCH)[1])
    assert set(servers) == {"a_master", "a_replicas"}
    assert servers["a_master"]["n1"].admin is AdminState.READY  # 4
    assert servers["a_replicas"]["n2"].admin is AdminState.DRAIN  # 12
    assert servers["a_master"]["n2"].port == 7000


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty output"),
        ("2\n# be_id be_name\n", "unsupported format version"),
        ("1\n3 g_master 1 n1 127.0.0.2 0 1\n", "data before the header"),
    ],
)
def test_servers_state_garbage_raises(text: str, problem: str) -> None:
    """Unknown versions, missing headers and empty output are refused, naming the problem."""
    with pytest.raises(HAProxyReplyError, match=problem):
        parse_servers_state(text)


def test_servers_state_bad_line_raises_with_the_line() -> None:
    """A data line with a non-numeric admin state (or missing columns) is refused, quoted."""
    header, line = parts(BITS)[1].splitlines()[1:3]
    words = line.split()
    words[6] = "x"
    with pytest.raises(HAProxyReplyError, match=r"bad line '3 g_master 1 n1"):
        parse_servers_state("\n".join(["1", header, " ".join(words)]))
    with pytest.raises(HAProxyReplyError, match="bad line"):
        parse_servers_state("\n".join(["1", header, " ".join(line.split()[:4])]))


# -- show stat -------------------------------------------------------------------------


def test_stat_sessions_per_server() -> None:
    """`show stat -1 4 -1` gives scur per (backend, server): the maint server keeps its
    session; no server of that config is a backup one."""
    stats = parse_stat(parts(BITS)[2])
    assert stats[("g_master", "n1")] == (1, False)
    assert sum(n for n, _ in stats.values()) == 1
    assert len(stats) == 9
    assert not any(b for _, b in stats.values())


def test_stat_skips_frontend_and_backend_rows() -> None:
    """A full `show stat` (with FRONTEND/BACKEND rows carrying scur too) counts servers only."""
    sessions = parse_stat(haproxy_text("haproxy_admin_bits_stat_all.txt"))
    assert ("g_write", "FRONTEND") not in sessions
    assert ("g_master", "BACKEND") not in sessions
    assert sessions == parse_stat(parts(BITS)[2])


def test_stat_quoted_fields_parse_as_plain_ones() -> None:
    """HAProxy quotes no field of its own, so plain lines are split on commas; a reply with a
    quoted field goes through the csv module, and the same values give the same result."""
    header, *rows = parts(BITS)[2].splitlines()
    quoted = [",".join(f'"{c}"' for c in row.split(",")) for row in rows]
    assert parse_stat("\n".join([header, *quoted])) == parse_stat(parts(BITS)[2])


def test_stat_columns_are_found_by_name_wherever_they_are() -> None:
    """Columns are found by header name: with `bck` moved to the last column (a row is split
    only as far as the columns read), the same servers, sessions and backup flags come out."""
    header, *rows = parts(BITS)[2].splitlines()
    names = header[2:].split(",")
    at = names.index("bck")

    def moved(cols: list[str]) -> list[str]:
        return cols[:at] + cols[at + 1:] + [cols[at]]

    text = "\n".join(["# " + ",".join(moved(names)),
                      *(",".join(moved(r.split(","))) for r in rows)])
    assert parse_stat(text) == parse_stat(parts(BITS)[2])


def test_stat_garbage_raises() -> None:
    """No header, a header without scur, a short row or a non-numeric scur are refused."""
    stat = parts(BITS)[2]
    header, row = stat.splitlines()[:2]
    with pytest.raises(HAProxyReplyError, match="no CSV header"):
        parse_stat("Unknown command\n")
    with pytest.raises(HAProxyReplyError, match="lacks pxname/svname/scur/bck"):
        parse_stat(header.replace(",scur,", ",sxur,") + "\n" + row)
    with pytest.raises(HAProxyReplyError, match="short row"):
        parse_stat(header + "\ng_master,n1,0\n")
    cols = row.split(",")
    cols[4] = "many"
    with pytest.raises(HAProxyReplyError, match="scur 'many' is not a number"):
        parse_stat(header + "\n" + ",".join(cols))


def test_stat_field_over_the_csv_size_limit_raises() -> None:
    """A CSV field longer than the csv module accepts (128 KiB) is refused as a bad reply, not
    a csv.Error the adapter does not catch (found by tests/test_properties_parse.py)."""
    header, row = parts(BITS)[2].splitlines()[:2]
    with pytest.raises(HAProxyReplyError, match=r"bad CSV.*field larger than field limit"):
        parse_stat(header + "\n" + row.replace(",", "," + "9" * 131_073 + ",", 1))


def test_state_batch_merges_sessions_into_servers() -> None:
    """A whole state batch parses into servers carrying their session counts."""
    state = haproxy_state(BITS)
    assert state.backends["g_master"]["n1"].sessions == 1
    assert state.backends["g_master"]["n1"].admin is AdminState.MAINT
    assert state.info.pid > 0


# -- split_replies ---------------------------------------------------------------------


def test_split_replies_ok_and_error_lines() -> None:
    """A `;` batch reply splits into one output per command: empty = ok, else the error text."""
    assert split_replies(haproxy_text("haproxy_set_reply_with_error.txt"), 2) == [
        "",
        "No such server.",
    ]
    assert split_replies(haproxy_text("haproxy_admin_bits_batch.txt"), 4) == [
        "",
        "No such server.",
        "No such backend.",
        "",
    ]


def test_split_replies_of_multi_line_outputs() -> None:
    """The state batch splits at the blank line that ends each command's output."""
    info, servers, stat = parts(BATCH)
    assert info.startswith("Name: HAProxy")
    assert servers.startswith("1\n# be_id")
    assert stat.startswith("# pxname,svname")


@pytest.mark.parametrize("count", [3, 5])
def test_split_replies_too_few_outputs_raises(count: int) -> None:
    """Fewer outputs than commands (a cut reply) is refused with both counts."""
    with pytest.raises(HAProxyReplyError, match=f"expected {count} replies, got 2"):
        split_replies(haproxy_text("haproxy_set_reply_with_error.txt"), count)


def test_split_replies_empty_reply_raises() -> None:
    """An empty reply (HAProxy closed the connection) is refused."""
    with pytest.raises(HAProxyReplyError, match="expected 1 replies, got 0"):
        split_replies("", 1)


# -- set server addr (captured from a real HAProxy 2.6: tests/data/capture_slots.py) --------

def _addr_doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DATA / "haproxy_set_addr_replies.json").read_text())
    return doc


def test_set_addr_replies_success_is_a_line_not_an_empty_reply() -> None:
    """Every captured `set server ... addr` reply: the address-in-place ones are successes
    (IP/port changed or nothing to change, also IPv4 -> IPv6), the others are errors."""
    from controller.haproxy_parse import set_addr_ok

    verdicts = [set_addr_ok(c["reply"]) for c in _addr_doc()["cases"]]
    assert verdicts == [True, True, True, True, True, False, False, False]
    assert not set_addr_ok("")  # an empty reply is NOT a success here
    assert not set_addr_ok("Permission denied\n\n")


def test_a_batch_with_addr_commands_splits_into_one_result_each() -> None:
    """The captured batch (state, addr, bad addr, state) splits into 4 outputs, and each
    CommandResult judges its own kind of reply."""
    from controller.haproxy import CommandResult
    from controller.model import Command

    doc = _addr_doc()
    texts = [c.strip() for c in doc["batch"].split(";")]
    outputs = split_replies(doc["batch_reply"], len(texts))
    results = [CommandResult(Command(t, "b", "s", "why",
                                     expect="addr" if " addr " in t else "empty"), o.strip())
               for t, o in zip(texts, outputs, strict=True)]
    assert [r.ok for r in results] == [True, True, False, True]
    assert results[2].output == "Invalid addr 'bad' by 'stats socket command'"


def test_slot_states_parse_with_ipv6_and_backup_slots() -> None:
    """The generated config's state: slots at the placeholder, an IPv6 slot, backup slots
    flagged, the reader's session counted, an unresolved FQDN slot as `-`."""
    state = haproxy_state("haproxy_slots_filled.txt")
    w, r = state.backends["redis1_master"], state.backends["redis1_replicas"]
    assert w["slot3"].addr == "::1"
    assert r["slot-fallback1"].backup and not r["slot1"].backup
    assert r["slot1"].sessions == 1
    assert state.backends["fq"]["fqdn1"].addr == "-"
    first = haproxy_state("haproxy_slots_initial.txt")
    assert {(s.addr, s.port) for s in first.backends["redis1_master"].values()} == {
        ("127.0.0.1", 1)}


# -- master CLI (tests/data/haproxy_master_cli.json) -------------------------------------


def _master_cli() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DATA / "haproxy_master_cli.json").read_text())
    return doc


def test_show_proc_gives_the_old_workers_only() -> None:
    """`show proc` after a reload: the old worker's PID, not the master's nor the new
    worker's; without an `# old workers` entry, none."""
    doc = _master_cli()
    assert parse_old_workers(doc["show_proc"]) == [doc["old_pid"]]
    before = doc["show_proc"].split("# old workers")[0] + "# programs\n\n"
    assert parse_old_workers(before) == []


@pytest.mark.parametrize("text", ["", "Unknown command.\n", "#<PID> <type>\n# old workers\nx y\n"])
def test_show_proc_garbage_raises(text: str) -> None:
    """A reply that is not a process list, or an old-worker line without a PID, raises."""
    with pytest.raises(HAProxyReplyError, match="show proc"):
        parse_old_workers(text)


def test_show_sess_gives_the_streams_to_the_servers_asked() -> None:
    """`show sess` of the old worker: the ids of its streams to g_master/n1 (two), to
    g_replicas/n1 (one); the CLI's own stream and other servers are not taken."""
    doc = _master_cli()
    text = doc["show_sess"]
    assert parse_sessions(text, {("g_master", "n1")}) == doc["g_master_ids"]
    assert len(parse_sessions(text, {("g_replicas", "n1")})) == 1
    assert len(parse_sessions(text, {("g_master", "n1"), ("g_replicas", "n1")})) == 3
    assert parse_sessions(text, {("g_master", "n2")}) == []
    assert parse_sessions(text, set()) == []
    assert parse_sessions("", {("g_master", "n1")}) == []
