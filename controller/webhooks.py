"""Webhook alerts: POST a JSON message on failovers, replica changes and undecided state.

A bounded queue and one sender thread: `notify()` never blocks the control path; when the
queue is full the message is dropped and counted. Each POST has a timeout and a few
retries with backoff. Payload has `text` (Slack-compatible) plus structured fields.
Must not log URLs with credentials in them (only the host is logged).
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import requests
import structlog

log = structlog.get_logger("controller.webhooks")

_TEXT = {
    "failover": "Redis {group}: master moved {from} -> {to} (epoch {epoch})",
    "replica_lost": "Redis {group}: replica {replica} out of the read backend",
    "replica_back": "Redis {group}: replica {replica} back in the read backend",
    "undecided": "Redis {group}: Sentinels undecided ({reason}); HAProxy left as is",
    "drift_corrected": "HAProxy {haproxy}: {commands} command(s) applied to match Sentinel",
}


class WebhookNotifier:
    def __init__(self, urls: Sequence[str], timeout_s: float = 2.0, retries: int = 3,
                 maxsize: int = 1000) -> None:
        self.urls = list(urls)
        self.timeout_s = timeout_s
        self.retries = retries
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize)
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._session = requests.Session()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        with contextlib.suppress(queue.Full):
            self._q.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)

    def notify(self, kind: str, data: dict[str, object]) -> None:
        text = _TEXT.get(kind, kind).format_map({k: data.get(k, "?") for k in
                                                 ("group", "from", "to", "epoch", "replica",
                                                  "reason", "haproxy", "commands")})
        msg = {"text": text, "kind": kind, "host": socket.gethostname(),
               "ts": time.time(), **data}
        try:
            self._q.put_nowait(msg)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            msg = self._q.get()
            if msg is None:
                return
            for url in self.urls:
                try:
                    self._post(url, msg)
                except Exception:  # nothing may kill the sender: later alerts must still go
                    self.failed += 1
                    with contextlib.suppress(Exception):
                        log.exception("unexpected_error", where="webhook sender")

    def _post(self, url: str, msg: dict[str, Any]) -> None:
        host = urlsplit(url).hostname or "?"
        delay = 0.2
        for attempt in range(1, self.retries + 1):
            try:
                r = self._session.post(url, json=msg, timeout=self.timeout_s)
                if r.status_code < 300:
                    self.sent += 1
                    return
                err = f"HTTP {r.status_code}"
            except requests.RequestException as e:
                err = type(e).__name__
            if attempt == self.retries:
                self.failed += 1
                log.warning("webhook_failed", host=host, kind=msg.get("kind"), error=err,
                            attempts=attempt)
                return
            time.sleep(delay)  # backoff between retries, in the sender thread only
            delay *= 2
