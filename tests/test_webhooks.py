"""WebhookNotifier against a real local HTTP server (http.server in a thread on 127.0.0.1), and the
daemon's alerts end to end: a real failover and a hand edit of HAProxy reach the server."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from itest_support import controller_for, ready

from controller.webhooks import WebhookNotifier
from lab.localstack import LocalStack
from lab.wait import wait_until

NotifierFactory = Callable[..., WebhookNotifier]


class HookServer:
    """Records every POST body; answers with the next status of `statuses` (then 200), or
    hangs (until released) while `hang` is set."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.statuses: list[int] = []
        self.hang = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer.lock:
                    outer.received.append(json.loads(body))
                    outer.paths.append(self.path)
                    status = outer.statuses.pop(0) if outer.statuses else 200
                if outer.hang.is_set():
                    outer.release.wait(10)  # bounded: the test releases it at teardown
                    return
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def kinds(self) -> list[str]:
        with self.lock:
            return [str(m.get("kind")) for m in self.received]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [m for m in self.received if m.get("kind") == kind]


@pytest.fixture
def server() -> Iterator[HookServer]:
    s = HookServer()
    s.thread.start()
    yield s
    s.release.set()
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def notifier() -> Iterator[NotifierFactory]:
    """Factory: ``notifier(urls, **kwargs)`` makes a started WebhookNotifier; all are stopped
    at teardown."""
    made: list[WebhookNotifier] = []

    def make(*args: Any, **kwargs: Any) -> WebhookNotifier:
        n = WebhookNotifier(*args, **kwargs)
        made.append(n)
        n.start()
        return n

    yield make
    for n in made:
        n.stop(timeout_s=5)


def test_notify_posts_slack_compatible_json(server: HookServer,
                                            notifier: NotifierFactory) -> None:
    """A failover message arrives as JSON with a Slack `text` plus the structured fields."""
    n = notifier([server.url], timeout_s=2)
    n.notify("failover", {"group": "redis1", "from": "10.0.0.1:6379", "to": "10.0.0.2:6379",
                          "epoch": 3})
    wait_until(lambda: n.sent == 1, 10, "one webhook sent")
    msg = server.received[0]
    assert msg["text"] == "Redis redis1: master moved 10.0.0.1:6379 -> 10.0.0.2:6379 (epoch 3)"
    assert (msg["kind"], msg["group"], msg["epoch"]) == ("failover", "redis1", 3)
    assert server.paths == ["/hook"]


def test_retries_on_http_500_then_succeeds(server: HookServer,
                                           notifier: NotifierFactory) -> None:
    """Two HTTP 500 answers then 200: the same message is posted 3 times and counted sent once."""
    server.statuses = [500, 500]
    n = notifier([server.url], timeout_s=2, retries=3)
    n.notify("replica_lost", {"group": "redis1", "replica": "10.0.0.3:6379"})
    wait_until(lambda: n.sent == 1, 10, "the message sent after retries")
    assert n.failed == 0
    assert len(server.received) == 3
    assert all(m == server.received[0] for m in server.received)


def test_gives_up_after_retries_when_the_server_hangs(server: HookServer,
                                                      notifier: NotifierFactory) -> None:
    """A server that never answers: each POST times out, the message counts as failed."""
    server.hang.set()
    n = notifier([server.url], timeout_s=0.3, retries=2)
    n.notify("undecided", {"group": "redis1", "reason": "1 of 3 sentinels answered"})
    wait_until(lambda: n.failed == 1, 15, "the message given up")
    assert n.sent == 0
    assert len(server.received) == 2  # one attempt per retry


def test_full_queue_drops_and_counts_and_notify_never_blocks(
    server: HookServer, notifier: NotifierFactory
) -> None:
    """With the sender stuck on a hanging server and the queue full, notify() still returns at
    once and counts each dropped message."""
    server.hang.set()
    n = notifier([server.url], timeout_s=5, retries=1, maxsize=2)
    n.notify("failover", {"group": "g0"})
    wait_until(lambda: len(server.received) == 1, 10, "the sender stuck in its first POST")
    done = threading.Event()

    def burst() -> None:
        for i in range(1, 11):
            n.notify("failover", {"group": f"g{i}"})
        done.set()

    t = threading.Thread(target=burst, daemon=True)
    t.start()
    t.join(5)  # a bound, not a speed goal: a blocking notify() would never finish
    assert done.is_set(), "notify() blocked"
    assert n.dropped == 8  # 10 notified, 2 fit in the queue
    server.release.set()


def test_unknown_kind_uses_the_kind_as_text(server: HookServer,
                                            notifier: NotifierFactory) -> None:
    """A kind without a template still posts, with the kind as text."""
    n = notifier([server.url])
    n.notify("something_new", {})
    wait_until(lambda: n.sent == 1, 10, "sent")
    assert server.received[0]["text"] == "something_new"


def test_a_broken_url_does_not_stop_the_sender(server: HookServer,
                                               notifier: NotifierFactory) -> None:
    """A malformed URL fails (counted) and the other URL, and later messages, still get sent."""
    n = notifier(["http://[::1", server.url])  # urlsplit raises ValueError on the first
    n.notify("failover", {"group": "g1"})
    n.notify("failover", {"group": "g2"})
    wait_until(lambda: n.sent == 2, 10, "both messages sent to the good URL")
    assert n.failed == 2
    assert [m["group"] for m in server.received] == ["g1", "g2"]


# --------------------------------------------------------------------------- end to end


@pytest.mark.integration
def test_daemon_posts_drift_corrected_on_hand_edit_and_failover_on_master_death(
    stack: LocalStack, server: HookServer, tmp_path: Path
) -> None:
    """The daemon posts drift_corrected when someone edits HAProxy by hand (not at start-up),
    and a Slack-compatible failover message when the master dies."""
    log = tmp_path / "daemon.log"
    with controller_for(stack, log, extra_args=["--webhook-url", server.url,
                                                "--log-level", "debug"]) as d:
        wait_until(lambda: ready(stack, "redis1_master", "redis1a"), 20, "initial state applied")
        d.wait_event("pass", trigger="resync")  # a periodic pass after the initial one
        assert server.kinds() == []  # applying the initial state is not a hand edit

        stack.haproxy_command("set server redis1_master/redis1a state maint")
        wait_until(lambda: server.of_kind("drift_corrected"), 15, "drift_corrected webhook")
        msg = server.of_kind("drift_corrected")[0]
        assert msg["haproxy"] == str(stack.haproxy_socket) and msg["commands"] == 1
        assert msg["text"].endswith("1 command(s) applied to match Sentinel")
        assert ready(stack, "redis1_master", "redis1a")
        d.wait_event("drift_corrected")

        old = stack.nodes["redis1a"]
        new = stack.nodes["redis1b"]
        stack.kill_node("redis1a")
        wait_until(lambda: server.of_kind("failover"), 40, "failover webhook")
        fo = server.of_kind("failover")[0]
        assert fo["group"] == "redis1"
        assert fo["from"] == f"{old.host}:{old.port}" and fo["to"] == f"{new.host}:{new.port}"
        assert fo["text"].startswith(f"Redis redis1: master moved {old.host}:{old.port} -> "
                                     f"{new.host}:{new.port}")
        wait_until(lambda: ready(stack, "redis1_master", "redis1b"), 10, "redis1b gets writes")
        # Following Sentinel is not a hand edit.
        assert len(server.of_kind("drift_corrected")) == 1, server.kinds()
    assert d.returncode == 0, d.tail()
    assert not d.problems(), d.problems()
