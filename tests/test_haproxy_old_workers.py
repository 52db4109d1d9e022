"""controller.haproxy_old_workers: the sessions a reload's old workers keep, closed through a
master CLI (an in-memory one, tests/fakes.py), and what is logged when it cannot be asked."""

from __future__ import annotations

import threading
from pathlib import Path

from fakes import FakeHAProxyMaster
from structlog.testing import capture_logs

from controller.haproxy_old_workers import OldWorkers
from lab.wait import wait_until

FENCED = {("redis1_master", "redis1a")}


def test_every_old_worker_is_asked_and_one_line_per_worker_that_had_sessions() -> None:
    """Two old workers: both are asked for the fenced server; the one that held two sessions
    there gets a line naming its PID and count, the other none."""
    m = FakeHAProxyMaster()
    m.old = {101: {("redis1_master", "redis1a"): 2, ("redis1_replicas", "redis1a"): 1},
             102: {}}
    with capture_logs() as logs:
        assert OldWorkers(m, "/run/admin.sock").close(FENCED, "master is o_down") == 2
    assert m.asked == [(101, frozenset(FENCED)), (102, frozenset(FENCED))]
    assert m.old[101] == {("redis1_replicas", "redis1a"): 1}  # reads not asked: left alone
    (line,) = [e for e in logs if e["event"] == "old_worker_sessions_closed"]
    assert (line["pid"], line["sessions"], line["reason"]) == (101, 2, "master is o_down")
    assert line["servers"] == ["redis1_master/redis1a"]


def test_no_old_worker_no_question_no_line() -> None:
    """Without a reload there is no old worker: nothing is asked beyond `show proc`."""
    m = FakeHAProxyMaster()
    with capture_logs() as logs:
        assert OldWorkers(m, "/run/admin.sock").close(FENCED, "fenced") == 0
    assert m.asked == [] and logs == []


def test_an_unreachable_master_cli_is_a_warning_once_until_it_changes(tmp_path: Path) -> None:
    """A master socket that exists but fails: one `old_workers_unreachable` warning, not one
    per fence; after a success, the next failure is logged again."""
    sock = tmp_path / "master.sock"
    sock.touch()
    m = FakeHAProxyMaster(str(sock))
    m.fail = "cannot talk to the socket: refused"
    w = OldWorkers(m, "/run/admin.sock")
    with capture_logs() as logs:
        for _ in range(3):
            assert w.close(FENCED, "fenced") == 0
        m.fail = ""
        w.close(FENCED, "fenced")
        m.fail = "cannot talk to the socket: refused"
        w.close(FENCED, "fenced")
    lines = [e for e in logs if e["event"] == "old_workers_unreachable"]
    assert len(lines) == 2
    assert lines[0]["log_level"] == "warning" and lines[0]["master_socket"] == str(sock)


def test_no_master_cli_at_the_path_is_said_once_as_information(tmp_path: Path) -> None:
    """HAProxy run without `-S` (no socket at the path): one `old_workers_unchecked` line that
    says what a reload leaves out of reach, and no warning."""
    m = FakeHAProxyMaster(str(tmp_path / "master.sock"))
    m.fail = "cannot talk to the socket: [Errno 2] No such file or directory"
    w = OldWorkers(m, "/run/admin.sock")
    with capture_logs() as logs:
        w.close(FENCED, "fenced")
        w.close(FENCED, "fenced")
    assert [e["event"] for e in logs] == ["old_workers_unchecked"]
    assert logs[0]["log_level"] == "info" and "hard-stop-after" in logs[0]["detail"]


def test_requests_are_closed_by_the_thread_and_stop_ends_it() -> None:
    """`request` from the worker's thread returns at once; `run`'s thread closes the servers
    handed over, and ends when its stop event is set and it is woken."""
    m = FakeHAProxyMaster()
    m.old = {7: {("redis1_master", "redis1a"): 1}}
    w = OldWorkers(m, "/run/admin.sock")
    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(stop,), daemon=True)
    t.start()
    try:
        w.request(FENCED, "fenced")
        wait_until(lambda: m.old[7] == {}, 5, "the old worker's session closed")
        assert m.asked == [(7, frozenset(FENCED))]
    finally:
        stop.set()
        w.wake()
        t.join(5)
    assert not t.is_alive()


def test_a_refused_sweep_is_tried_again_until_the_master_answers(tmp_path: Path) -> None:
    """Right after a reload the master re-executes itself and refuses connections: the thread
    keeps the servers and asks again (with backoff) until it answers, then closes the old
    worker's sessions; the refusal is logged once."""
    sock = tmp_path / "master.sock"
    sock.touch()
    m = FakeHAProxyMaster(str(sock))
    m.old = {7: {("redis1_master", "redis1a"): 1}}
    m.fail = "cannot talk to the socket: [Errno 111] Connection refused"
    w = OldWorkers(m, "/run/admin.sock")
    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(stop,), daemon=True)
    with capture_logs() as logs:
        t.start()
        try:
            w.request(FENCED, "fenced")
            wait_until(lambda: len([e for e in logs if e["event"] == "old_workers_unreachable"])
                       == 1, 5, "the refusal logged")
            m.fail = ""
            wait_until(lambda: m.old[7] == {}, 5, "the old worker's session closed on a retry")
        finally:
            stop.set()
            w.wake()
            t.join(5)
    assert [e["event"] for e in logs].count("old_workers_unreachable") == 1
    assert [e["pid"] for e in logs if e["event"] == "old_worker_sessions_closed"] == [7]
