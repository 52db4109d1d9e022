"""Partition drills on real processes, each inside a network namespace made for it (root):
the namespace helper itself, then scenarios a, b and c run once on the controller and the
classic recipe side by side through `sentinel-haproxy drill --partition ... --compare`.

Skipped, with the reason, where network namespaces are not permitted (not root, or
`ip netns add` refused).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from itest_support import REPO_ROOT, procs_under

from lab.netns import Namespace, own_namespace_inode, unavailable_reason

pytestmark = pytest.mark.integration

CUT_S = 6.0
WRITERS = 2  # lab.compare's drills write with two writers


@pytest.fixture(scope="module")
def netns() -> None:
    """Skip (with the reason) where this process cannot make network namespaces."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"partition drills need network namespaces: {reason}")


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_namespace_is_deleted_with_every_process_left_inside(netns: None) -> None:
    """A process left running inside the namespace (in its own session) is stopped by PID and
    the namespace is gone after the `with` block."""
    with Namespace() as ns:
        res = ns.run(["sh", "-c", "setsid sleep 300 >/dev/null 2>&1 & echo $!"], 10.0)
        pid = int(res.stdout.split()[-1])
        assert ns.name in _netns_names()
        assert pid in ns.pids()
    assert not os.path.exists(f"/proc/{pid}") or Path(f"/proc/{pid}/stat").read_text(
    ).rsplit(")", 1)[1].split()[0] == "Z"
    assert ns.name not in _netns_names()


_PROBE = textwrap.dedent("""
    import json, socket, sys
    from lab.netns import Cut, Firewall
    fw = Firewall(sys.argv[1], int(sys.argv[2]))
    servers = []
    for host in ("127.0.0.3", "127.0.0.4"):
        s = socket.socket(); s.bind((host, 7000)); s.listen(8); servers.append(s)
    def reach(dst):
        c = socket.socket(); c.settimeout(0.3); c.bind(("127.0.0.2", 0))
        try:
            c.connect((dst, 7000)); return True
        except OSError:
            return False
        finally:
            c.close()
    out = {"before": reach("127.0.0.3")}
    fw.cut(Cut("shx-probe", frozenset({"127.0.0.2"}), frozenset({"127.0.0.3"})))
    out["cut"], out["other"] = reach("127.0.0.3"), reach("127.0.0.4")
    out["rules"] = fw.rules()
    fw.heal("shx-probe")
    out["healed"] = reach("127.0.0.3")
    out["rules_after"] = fw.rules()
    print(json.dumps(out))
""")


def test_firewall_cuts_and_heals_a_link_inside_the_namespace_only(netns: None) -> None:
    """A cut inside the namespace drops 127.0.0.2 <-> 127.0.0.3 but not 127.0.0.2 -> 127.0.0.4,
    the heal restores it and removes its chain, and the caller's firewall stays untouched."""
    before = subprocess.run(["iptables", "-S"], capture_output=True, text=True, check=True)
    with Namespace() as ns:
        res = ns.run([sys.executable, "-c", _PROBE, ns.name, str(own_namespace_inode())], 30.0)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert (out["before"], out["cut"], out["other"], out["healed"]) == (True, False, True, True)
    assert "-A shx-probe -s 127.0.0.3/32 -d 127.0.0.2/32 -j DROP" in out["rules"]
    assert "shx-probe" not in out["rules_after"]
    after = subprocess.run(["iptables", "-S"], capture_output=True, text=True, check=True)
    assert after.stdout == before.stdout


@pytest.fixture(scope="module")
def drills(netns: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Scenarios a, b and c, once each, on the classic and controller setups at once."""
    workdir = tmp_path_factory.mktemp("partition")
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "controller", "drill", "--partition", "a,b,c", "--compare",
         "--setup", "classic,controller", "--cut-s", str(CUT_S), "--json", "--yes",
         "--workdir", str(workdir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    seconds = time.monotonic() - t0
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    doc: dict[str, Any] = json.loads(res.stdout)
    doc["wall_s"] = round(seconds, 1)
    for sc in "abc":
        for setup, runs in doc["scenarios"][sc]["runs"].items():
            r = runs[0]
            print(f"partition {sc} {setup}: outage {r['write_outage_ms']} ms, lost "
                  f"{r['acked_lost']} of {r['acked_checked']}, out {r['out_ms']} ms, heal -> "
                  f"write {r['heal_to_write_ms']} ms")
    print(f"partition drills: {seconds:.1f} s")
    assert procs_under(workdir) == [], "processes left running in the drill's workdir"
    assert doc["netns"] not in _netns_names()
    return doc


def _run(doc: dict[str, Any], scenario: str, setup: str) -> dict[str, Any]:
    report: dict[str, Any] = doc["scenarios"][scenario]["runs"][setup][0]
    return report


def test_drills_leave_no_controller_problem(drills: dict[str, Any]) -> None:
    """The daemon logged no unexpected_error or traceback and stopped cleanly."""
    assert drills["controller_problems"] == []


def test_c_one_sentinel_cut_off_changes_nothing(drills: dict[str, Any]) -> None:
    """(c): no failover, no HAProxy change (no controller command), no failed or lost write,
    on both setups."""
    for setup in ("classic", "controller"):
        r = _run(drills, "c", setup)
        assert r["cut_ms"] >= CUT_S * 1000
        assert not r["failed_over"], setup
        assert r["haproxy_changes"] == 0, setup
        assert r["writes_failed"] == 0 and r["acked_lost"] == 0, setup
        assert r["acked_checked"] > 1000, setup
    assert _run(drills, "c", "controller")["controller_commands"] == 0


def test_a_controller_follows_the_failover_and_fences_the_cut_off_master(
    drills: dict[str, Any],
) -> None:
    """(a): the controller follows Sentinel's failover, fences the cut-off old master during the
    cut and no later write (one writer opens a new connection per write) is acked by it, so
    only what it acked before the fence is lost, less than with the classic recipe."""
    r = _run(drills, "a", "controller")
    assert r["failed_over"] and r["new_master"] != r["old_master"]
    assert r["out_ms"] is not None and r["out_ms"] < r["cut_ms"]
    assert r["acked_old_after_out"] == 0
    assert r["first_write_new_ms"] is not None and r["first_write_new_ms"] < r["cut_ms"]
    assert r["acked_lost"] <= r["acked_old_after_cut"] + WRITERS
    assert r["lost_last_ms"] is None or r["lost_last_ms"] <= r["out_ms"]
    classic = _run(drills, "a", "classic")
    assert classic["failed_over"]
    assert classic["acked_lost"] > r["acked_lost"]


def test_b_minority_side_numbers(drills: dict[str, Any]) -> None:
    """(b) without a write lease: after the heal the controller moves writes to the new master
    and fences the old one, whose earlier acks are the only ones lost (numbers printed)."""
    r = _run(drills, "b", "controller")
    assert r["failed_over"]
    assert r["heal_to_write_ms"] is not None
    assert r["out_ms"] is not None and r["acked_old_after_out"] == 0
    assert r["acked_lost"] <= r["acked_old_after_cut"] + WRITERS
    assert r["lost_last_ms"] is None or r["lost_last_ms"] <= r["out_ms"]
    assert _run(drills, "b", "classic")["failed_over"]
