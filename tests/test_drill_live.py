"""`sentinel-haproxy drill` against a running local stack driven by the controller daemon."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.daemon import ControllerDaemon
from lab.localstack import Layout, LocalStack

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    with LocalStack(tmp_path / "stack", Layout.for_tests(groups=("redis1",))) as st:
        ctl = ControllerDaemon([str(a) for a in st.sentinel_addrs], [str(st.haproxy_socket)],
                               tmp_path / "ctl" / "controller.log")
        ctl.start()
        try:
            ctl.wait_in_sync(("redis1",))
            yield st
        finally:
            ctl.stop()
        assert not ctl.problems(), ctl.problems()


def drill(st: LocalStack, *extra: str) -> subprocess.CompletedProcess[str]:
    sentinels = ",".join(str(a) for a in st.sentinel_addrs)
    argv = [sys.executable, "-m", "controller", "drill", "--sentinel", sentinels,
            "--write", f"127.0.0.1:{st.write_port('redis1')}",
            "--read", f"127.0.0.1:{st.read_port('redis1')}", "--master", "redis1",
            "--haproxy-socket", str(st.haproxy_socket), "--duration-s", "30", *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_drill_without_yes_only_says_what_it_would_do(stack: LocalStack) -> None:
    """Without --yes the drill exits 2, names the master's PID and kills nothing."""
    res = drill(stack, "--method", "kill")
    assert res.returncode == 2, res.stderr
    pid = stack.node_pid("redis1a")
    assert f"SIGKILL redis process {pid} ({stack.nodes['redis1a'].addr!s})" in res.stdout
    assert stack.node_pid("redis1a") == pid


def test_failover_then_kill_drills_report_the_new_master_and_no_lost_write(
    stack: LocalStack,
) -> None:
    """SENTINEL FAILOVER then SIGKILL (PID from INFO) both move writes to the other node.

    The old master stays alive in a manual failover: the controller fences writes from the
    leader's `failover_in_progress` until the promotion is known, so it acks nothing that the
    failover then discards."""
    a, b = (str(stack.nodes[n].addr) for n in ("redis1a", "redis1b"))
    res = drill(stack, "--method", "failover", "--json", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)["report"]
    assert (report["old_master"], report["new_master"]) == (a, b)
    assert report["failed_over"] and report["acked_checked"] > 0
    assert report["acked_lost"] == 0
    assert report["switch_to_write_ms"] is not None
    assert report["write_outage_ms"] is not None

    res = drill(stack, "--method", "kill", "--json", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)["report"]
    assert (report["old_master"], report["new_master"]) == (b, a)
    # asynchronous replication: at most the last ack of each of the 2 writers may not have
    # reached the replica when SIGKILL lands
    assert report["acked_lost"] <= 2 and report["writes_failed"] > 0
    assert stack.node_pid("redis1b") is None  # killed through its INFO process_id
    timeline = json.loads(res.stdout)["timeline"]
    assert any("+promoted-slave" in t["what"] for t in timeline)


def test_pause_drill_fails_over_and_resumes_the_old_master(stack: LocalStack) -> None:
    """SIGSTOP longer than down-after: Sentinel fails over, the old master is resumed after."""
    a, b = (str(stack.nodes[n].addr) for n in ("redis1a", "redis1b"))
    pid = stack.node_pid("redis1a")
    res = drill(stack, "--method", "pause", "--pause-s", "4", "--json", "--yes")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    report = doc["report"]
    assert (report["old_master"], report["new_master"]) == (a, b)
    assert report["acked_lost"] <= report["acked_elsewhere"]
    assert any("SIGCONT" in t["what"] for t in doc["timeline"])
    assert stack.node_pid("redis1a") == pid  # alive again, never restarted
    assert stack.redis_command("redis1a", "PING") == "PONG"
