"""Partition drills without processes: the cuts each scenario makes, the iptables input they
become, the refusal to cut the host's own firewall, the partition's numbers on synthetic
samples, the observer addresses of the layout and the command line's checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from itest_support import REPO_ROOT

from lab.compare import table
from lab.localstack import Layout, render_redis_config, render_sentinel_config
from lab.measure import Recording
from lab.netns import Cut, Firewall, NetnsError, own_namespace_inode
from lab.partition import METRICS, cut_for, partition_numbers
from lab.probes import Mark, WriteSample

LAYOUT = Layout(groups=("redis1",), first_node_ip=42, first_sentinel_ip=70)
OLD, NEW = "127.0.0.42:6379", "127.0.0.43:6379"
SENTINELS = {"127.0.0.70", "127.0.0.71", "127.0.0.72"}
T0 = 1_000.0  # the cut


def test_a_cuts_the_master_from_sentinels_and_replicas_but_not_from_haproxy() -> None:
    """(a): the old master alone on one side; HAProxy's 127.0.0.1 is on neither side."""
    cut = cut_for("a", LAYOUT, "127.0.0.42", "shx-controller-a")
    assert cut.side_a == {"127.0.0.42"}
    assert cut.side_b == SENTINELS | {"127.0.0.43"}
    assert all("127.0.0.1" not in pair for pair in cut.pairs())


def test_b_puts_haproxy_controller_clients_and_old_master_on_the_minority_side() -> None:
    """(b): 127.0.0.1 (HAProxy, controller, clients) with the old master, against the
    Sentinels and the replicas (all of them, with 3-node groups)."""
    layout = Layout(groups=("redis1",), first_node_ip=42, first_sentinel_ip=70, replicas=2)
    cut = cut_for("b", layout, "127.0.0.43", "shx-controller-b")
    assert cut.side_a == {"127.0.0.1", "127.0.0.43"}
    assert cut.side_b == SENTINELS | {"127.0.0.42", "127.0.0.44"}


def test_c_cuts_one_sentinel_from_everything() -> None:
    """(c): the first Sentinel against the nodes, the other Sentinels and 127.0.0.1."""
    cut = cut_for("c", LAYOUT, "127.0.0.42", "shx-controller-c")
    assert cut.side_a == {"127.0.0.70"}
    assert cut.side_b == {"127.0.0.42", "127.0.0.43", "127.0.0.71", "127.0.0.72", "127.0.0.1"}


def test_unknown_scenario_or_master_is_refused() -> None:
    """A scenario other than a/b/c, or a master that is not a node, raises ValueError."""
    with pytest.raises(ValueError, match="scenario"):
        cut_for("d", LAYOUT, "127.0.0.42", "x")
    with pytest.raises(ValueError, match="not a node"):
        cut_for("a", LAYOUT, "127.0.0.9", "x")


def test_a_cut_becomes_one_chain_of_drop_rules_both_ways_and_is_removed_whole() -> None:
    """Every pair is dropped both ways in the cut's own chain, jumped to first from OUTPUT, and
    healing removes the jump and the chain."""
    cut = Cut("shx-x-a", frozenset({"127.0.0.2"}), frozenset({"127.0.0.3", "127.0.0.30"}))
    add = cut.add_rules().splitlines()
    assert add[:2] == ["*filter", ":shx-x-a - [0:0]"]
    assert "-A shx-x-a -s 127.0.0.2/32 -d 127.0.0.3/32 -j DROP" in add
    assert "-A shx-x-a -s 127.0.0.3/32 -d 127.0.0.2/32 -j DROP" in add
    assert sum(1 for ln in add if ln.endswith("-j DROP")) == 4
    assert add[-2:] == ["-I OUTPUT 1 -j shx-x-a", "COMMIT"]
    assert cut.remove_rules().splitlines() == [
        "*filter", "-D OUTPUT -j shx-x-a", "-F shx-x-a", "-X shx-x-a", "COMMIT"]


@pytest.mark.parametrize(("name", "a", "b"), [
    ("bad name!", {"127.0.0.2"}, {"127.0.0.3"}),
    ("x" * 29, {"127.0.0.2"}, {"127.0.0.3"}),
    ("ok", {"127.0.0.2"}, {"127.0.0.2"}),
    ("ok", {"127.0.0.2 -j ACCEPT"}, {"127.0.0.3"}),
])
def test_cut_refuses_bad_names_addresses_and_overlapping_sides(
    name: str, a: set[str], b: set[str]
) -> None:
    """A chain name iptables would reject, a non-address (no rule injection) or a host on both
    sides is a ValueError."""
    with pytest.raises(ValueError):
        Cut(name, frozenset(a), frozenset(b))


def test_firewall_refuses_the_namespace_this_test_runs_in() -> None:
    """Outside a namespace of the lab (here: the test's own) the firewall refuses before any
    iptables command runs."""
    assert Firewall.refusal(None) is not None
    reason = Firewall.refusal("shx-part-1-abc", own_namespace_inode())
    assert reason is not None and "refusing" in reason
    with pytest.raises(NetnsError, match="refusing"):
        Firewall("shx-part-1-abc", own_namespace_inode())


def _w(seq: int, t: float, ok: bool, node: str | None, writer: int = 1) -> WriteSample:
    return WriteSample(t + 0.001, t, writer, seq, f"k:{writer}:{seq}", ok, node)


def test_partition_numbers_from_a_synthetic_recording() -> None:
    """A synthetic cut (old master acking until +1.9 s, out at +2 s, heal at +6 s) gives the
    expected out time, lost window, acks after the cut and the fence, heal -> write and
    HAProxy changes."""
    ws = [_w(1, T0 - 0.5, True, OLD), _w(2, T0 + 0.1, True, OLD), _w(3, T0 + 1.9, True, OLD),
          _w(4, T0 + 2.5, False, OLD), _w(5, T0 + 3.0, True, NEW), _w(6, T0 + 6.2, True, NEW)]
    readback = {"k:1:1": "1", "k:1:5": "5", "k:1:6": "6"}  # what the old master acked is gone
    marks = (Mark(T0 - 1, "haproxy", "redis1_master/redis1a", "UP"),
             Mark(T0 + 2.0, "haproxy", "redis1_master/redis1a", "DOWN"),
             Mark(T0 + 2.0, "haproxy", "redis1_master/redis1b", "UP"),
             Mark(T0 + 2.0, "controller", "controller", "set redis1_master/redis1a maint"))
    rec = Recording(master="redis1", method="partition-a", fault_t=T0, old_master=OLD,
                    new_master=NEW, writes=tuple(ws), marks=marks, readback=readback,
                    end_t=T0 + 10, heal_t=T0 + 6.0)
    n = partition_numbers(rec, "redis1_master", "redis1a", has_controller=True)
    assert n.cut_ms == 6000.0
    assert n.out_ms == 2000.0
    assert n.acked_old_after_cut == 2 and n.acked_old_after_out == 0
    assert (n.lost_first_ms, n.lost_last_ms) == (101.0, 1901.0)
    assert n.heal_to_write_ms == pytest.approx(201.0)
    assert n.haproxy_changes == 2 and n.controller_commands == 1
    classic = partition_numbers(rec, "redis1_master", "redis1b", has_controller=False)
    assert classic.out_ms is None and classic.acked_old_after_out is None
    assert classic.controller_commands is None


def test_partition_table_reads_dict_reports() -> None:
    """The compare table takes the partition's flat dict reports and its own rows."""
    reports: dict[str, list[dict[str, float | None]]] = {
        "classic": [{"acked_lost": 10, "write_outage_ms": None}],
        "controller": [{"acked_lost": 2, "write_outage_ms": 300.0}]}
    text = table("a", reports, "the title", METRICS[:2])
    assert text.splitlines()[0].startswith("a: the title  (1 run;")
    assert "acknowledged writes lost" in text and "2 *" in text


def test_observer_addresses_and_redis_directives_in_rendered_configs(tmp_path: Path) -> None:
    """With observer aliases each sentinel also binds 127.1.0.N and every node's redis.conf
    ends with the extra directives, and without them the configs are as before."""
    layout = Layout(groups=("redis1",), observer_aliases=True,
                    redis_directives=("min-replicas-to-write 1", "min-replicas-max-lag 10"))
    assert layout.observer_hosts() == ["127.1.0.20", "127.1.0.21", "127.1.0.22"]
    assert "bind 127.0.0.20 127.1.0.20\n" in render_sentinel_config(layout, 0, tmp_path)
    node = layout.nodes()["redis1a"]
    assert render_redis_config(layout, node, tmp_path).endswith(
        "min-replicas-to-write 1\nmin-replicas-max-lag 10\n")
    plain = Layout(groups=("redis1",))
    assert plain.observer_hosts() == []
    assert "bind 127.0.0.20\n" in render_sentinel_config(plain, 0, tmp_path)
    with pytest.raises(ValueError, match="redis_directives"):
        Layout(redis_directives=("a\nb",))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller", "drill", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def test_partition_command_checks_its_arguments_and_asks_for_yes() -> None:
    """An unknown scenario is a usage error, and without --yes only the plan is printed
    (exit 2)."""
    res = _cli("--partition", "d")
    assert res.returncode == 2 and "unknown scenario" in res.stderr
    res = _cli("--partition", "a,c", "--compare", "--setup", "classic,controller",
               "--controller-arg=--no-early-promotion", "--cut-s", "7")
    assert res.returncode == 2, res.stderr
    assert "2 local one-group stacks" in res.stdout and "7 s" in res.stdout
    assert "- c: one Sentinel cut off from everything" in res.stdout
    assert "--no-early-promotion" in res.stdout
