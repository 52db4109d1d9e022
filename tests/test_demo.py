"""`sentinel-haproxy demo`: starts the whole local stack plus the controller and stops it all."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from itest_support import children_of, describe, procs_under, running

from lab.localstack import Layout
from lab.wait import wait_until

pytestmark = pytest.mark.integration


def demo_argv(layout: Layout, workdir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "controller", "demo", "--workdir", str(workdir),
        "--first-port", str(layout.first_frontend_port), "--stats-port", str(layout.stats_port),
        "--redis-port", str(layout.redis_port), "--sentinel-port", str(layout.sentinel_port),
        *extra,
    ]


def test_quick_demo_prints_the_map_and_leaves_no_process(tmp_path: Path) -> None:
    """`demo --quick` starts 10 processes + the controller, prints the map and stops them all."""
    layout = Layout.for_tests()
    res = subprocess.run(
        demo_argv(layout, tmp_path, "--quick"), capture_output=True, text=True, timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("processes:"))
    pids = [int(p) for p in line.split(":", 1)[1].split()]
    assert len(pids) == 6 + 3 + 1 + 1
    assert f"write :{layout.first_frontend_port} -> redis1a 127.0.0.2:{layout.redis_port}" in (
        res.stdout
    )
    assert f"read  :{layout.first_frontend_port + 1} -> redis1b" in res.stdout
    assert [p for p in pids if running(p)] == []
    assert procs_under(tmp_path) == []
    assert (tmp_path / "controller" / "controller.log").exists()


def test_taken_port_exits_2_naming_the_port(tmp_path: Path) -> None:
    """When a frontend port is taken the demo exits 2, names the port and starts nothing."""
    layout = Layout.for_tests()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", layout.first_frontend_port + 2))
        s.listen(1)
        res = subprocess.run(
            demo_argv(layout, tmp_path, "--quick"), capture_output=True, text=True,
            timeout=60, check=False,
        )
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"port {layout.first_frontend_port + 2} on 127.0.0.1" in res.stderr
    assert "redis2_write" in res.stderr
    assert procs_under(tmp_path) == []


def test_failover_demo_shows_sentinel_and_controller_steps_and_keeps_old_master_out(
    tmp_path: Path,
) -> None:
    """The full demo kills redis1a, shows the timeline, writes resume on redis1b and the
    restarted redis1a never gets a write; nothing is left running."""
    layout = Layout.for_tests()
    res = subprocess.run(
        demo_argv(layout, tmp_path), capture_output=True, text=True, timeout=240, check=False,
    )
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    line = next(ln for ln in out.splitlines() if ln.startswith("processes:"))
    pids = [int(p) for p in line.split(":", 1)[1].split()]
    for needle in ("+promoted-slave", "+switch-master", "set redis1_master/redis1b ready",
                   "first write acked by 127.0.0.3", "+convert-to-slave",
                   "0 of them by a node other than the Sentinel master"):
        assert needle in out, needle
    # asynchronous replication: at most the one write in flight when SIGKILL lands
    lost = re.search(r"acknowledged writes lost: (\d+) of", out)
    assert lost is not None and int(lost.group(1)) <= 1
    assert [p for p in pids if running(p)] == []
    assert procs_under(tmp_path) == []


def test_demo_runs_from_the_generated_config(tmp_path: Path) -> None:
    """`demo --generated-config`: HAProxy runs `sentinel-haproxy config`'s output (slots only,
    no node named in it); the controller fills the slots, the failover follows, the restarted
    old master gets no write, nothing is left running."""
    layout = Layout.for_tests()
    res = subprocess.run(
        demo_argv(layout, tmp_path, "--generated-config"), capture_output=True, text=True,
        timeout=240, check=False,
    )
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    generated = (tmp_path / "generated-haproxy.cfg").read_text()
    assert "server-template slot 1-8" in generated and "redis1a" not in generated
    assert (f"write :{layout.first_frontend_port} -> redis1a 127.0.0.2:{layout.redis_port} "
            "(slot slot1)") in out
    for needle in ("+promoted-slave", "first write acked by 127.0.0.3", "+convert-to-slave",
                   "0 of them by a node other than the Sentinel master"):
        assert needle in out, needle
    lost = re.search(r"acknowledged writes lost: (\d+) of", out)
    assert lost is not None and int(lost.group(1)) <= 1
    line = next(ln for ln in out.splitlines() if ln.startswith("processes:"))
    assert [p for p in (int(x) for x in line.split(":", 1)[1].split()) if running(p)] == []
    assert procs_under(tmp_path) == []


@contextmanager
def drill_in(workdir: Path, scenario: str) -> Iterator[subprocess.Popen[str]]:
    """`drill --compare` of the controller setup running `scenario` once in `workdir`; killed
    by its PID on the way out if a test left it running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller", "drill", "--compare", "--yes", "--setup",
         "controller", "--repeat", "1", "--scenario", scenario, "--workdir", str(workdir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def sigterm(proc: subprocess.Popen[str]) -> str:
    """SIGTERM the running drill; its output once it exited (exit code 130 asserted)."""
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    return out


def test_a_sigtermed_drill_stops_every_process_it_started() -> None:
    """`drill --compare` stopped with SIGTERM while its stack runs (as a CI job's timeout or
    `kill` does) stops the Redis nodes, Sentinels, HAProxy and controller it started, like
    Ctrl-C; before, they were left running."""
    # A short path: HAProxy's admin socket path must fit a Unix socket address (108 bytes).
    workdir = Path(tempfile.mkdtemp(prefix="drill-term-"))
    with drill_in(workdir, "kill") as proc:
        log = workdir / "controller" / "controller.log"  # the daemon starts last
        wait_until(lambda: log.exists() or proc.poll() is not None, 60,
                   "the drill's stack started")
        started = procs_under(workdir)
        out = sigterm(proc)
    assert "interrupted: every stack stopped" in out
    wait_until(lambda: not [p for p in started if running(p)], 15, "the stack's processes gone",
               context=lambda: describe([p for p in started if running(p)]))
    assert procs_under(workdir) == []
    shutil.rmtree(workdir, ignore_errors=True)


def test_a_drill_sigtermed_while_it_measures_stops_its_reader_processes() -> None:
    """`drill` stopped with SIGTERM while its readers (each a process of its own) are reading:
    the drill exits as on Ctrl-C and none of its child processes is left (the readers are
    stopped by their PIDs, and a reader whose drill is gone stops by itself)."""
    workdir = Path(tempfile.mkdtemp(prefix="drill-rd-"))
    with drill_in(workdir, "hold") as proc:
        def readers() -> list[int]:
            out = []
            for child in children_of(proc.pid):
                try:
                    cmd = Path(f"/proc/{child}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"multiprocessing" in cmd:
                    out.append(child)
            return out

        wait_until(lambda: len(readers()) >= 2 or proc.poll() is not None, 120,
                   "the drill's reader processes running")
        started = readers()
        sigterm(proc)
    wait_until(lambda: not [p for p in started if running(p)], 15, "the reader processes gone",
               context=lambda: describe([p for p in started if running(p)]))
    assert procs_under(workdir) == []
    shutil.rmtree(workdir, ignore_errors=True)
