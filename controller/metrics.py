"""Prometheus `/metrics` and `/healthz` over HTTP, read from the loop's counters.

Served by prometheus-client's WSGI app plus a tiny health route, in a daemon thread.
Must not change state or call Sentinel/HAProxy: it only reads `Controller.counters`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from controller.model import Address

if TYPE_CHECKING:
    from controller.loop import Controller
    from controller.webhooks import WebhookNotifier

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _Collector(Collector):
    def __init__(self, ctl: Controller, notifier: WebhookNotifier | None) -> None:
        self.ctl = ctl
        self.notifier = notifier

    def collect(self) -> Iterator[Any]:
        c = self.ctl.counters
        for name, doc, value in (
            ("failovers_seen", "Master changes the controller followed", c.failovers_seen),
            ("passes", "Reconcile passes", c.passes),
            ("commands_applied", "Runtime API commands applied", c.commands_applied),
            ("commands_failed", "Runtime API commands HAProxy refused", c.commands_failed),
            ("passes_with_changes", "HAProxy syncs that applied at least one command",
             c.passes_with_changes),
            ("hand_edits_undone", "Passes that undid a change made to HAProxy while Sentinel "
             "did not change (log line drift_corrected)", c.hand_edits_undone),
        ):
            yield CounterMetricFamily(f"sentinel_haproxy_{name}", doc, value=value)
        if self.notifier is not None:
            hooks = self.notifier
            for name, doc, value in (
                ("webhooks_sent", "Webhook POSTs answered 2xx", hooks.sent),
                ("webhooks_failed", "Webhook POSTs that failed after every retry", hooks.failed),
                ("webhooks_dropped", "Webhook messages dropped: queue full", hooks.dropped),
            ):
                yield CounterMetricFamily(f"sentinel_haproxy_{name}", doc, value=value)
        drift = GaugeMetricFamily("sentinel_haproxy_drift", "Commands still needed after the "
                                  "last pass (NaN: the read-back failed, unknown)",
                                  labels=["haproxy"])
        for target, n in sorted(dict(c.drift).items()):
            drift.add_metric([target], math.nan if n is None else n)
        yield drift
        state = GaugeMetricFamily("sentinel_haproxy_sentinel_state", "1 for each Sentinel's "
                                  "current state: ok, tilt, unreachable, auth, not_sentinel, "
                                  "bad_reply", labels=["sentinel", "state"])
        for sentinel, st in sorted(dict(self.ctl.sentinel_states).items()):
            state.add_metric([sentinel, st], 1)
        yield state
        master = GaugeMetricFamily("sentinel_haproxy_group_master", "The master this instance "
                                   "follows per group (1), with its config-epoch as value of "
                                   "sentinel_haproxy_group_epoch", labels=["group", "master"])
        epoch = GaugeMetricFamily("sentinel_haproxy_group_epoch", "Config-epoch of the master "
                                  "this instance follows", labels=["group"])
        fenced = GaugeMetricFamily("sentinel_haproxy_group_writable", "1 when the group has a "
                                   "master that takes writes (not fenced, not undecided)",
                                   labels=["group"])
        for group, d in sorted(self.ctl.verdicts().items()):
            if d.master is not None:
                master.add_metric([group, str(d.master)], 1)
                epoch.add_metric([group], d.epoch)
            fenced.add_metric([group], 1 if d.master is not None and not d.fenced else 0)
        yield master
        yield epoch
        yield fenced
        writer = GaugeMetricFamily("sentinel_haproxy_write_server", "Servers ready in a "
                                   "group's write backend on each HAProxy, as this instance "
                                   "left it (1)", labels=["haproxy", "group", "server"])
        for (target, group), servers in sorted(dict(self.ctl.write_servers).items()):
            writer.add_metric([target, group, servers or "none"], 1)
        yield writer
        up = GaugeMetricFamily("sentinel_haproxy_haproxy_up", "HAProxy socket reachable",
                               labels=["haproxy"])
        for target, ok in sorted(dict(c.haproxy_up).items()):
            up.add_metric([target], 1 if ok else 0)
        yield up
        sc = GaugeMetricFamily("sentinel_haproxy_sentinel_connected",
                               "Pub/sub connection to the Sentinel is alive", labels=["sentinel"])
        for w in self.ctl.watchers:
            sc.add_metric([str(w.addr)], 1 if w.connected else 0)
        yield sc
        ns = GaugeMetricFamily("sentinel_haproxy_nodes_without_slot",
                               "Nodes of a group that got no server slot in a backend (declare "
                               "more slots)", labels=["haproxy", "group", "backend"])
        for (target, group, backend), n in sorted(dict(c.nodes_without_slot).items()):
            ns.add_metric([target, group, backend], n)
        yield ns
        yield GaugeMetricFamily("sentinel_haproxy_undecided_groups",
                                "Groups the Sentinels could not decide", value=len(c.undecided))
        if c.last_event_to_applied_ms is not None:
            yield GaugeMetricFamily("sentinel_haproxy_last_event_to_applied_seconds",
                                    "Hint received to HAProxy command applied, last change",
                                    value=c.last_event_to_applied_ms / 1000)


def health(ctl: Controller) -> tuple[bool, str]:
    """Healthy when a Sentinel and every HAProxy were reachable recently, no HAProxy has been
    refusing commands (or leaving drift) and no group has been undecided for longer than
    `unhealthy_after_s`."""
    c = ctl.counters
    now = time.monotonic()
    horizon = 3 * ctl.settings.resync_interval_s + 5
    if not c.last_pass_ok or now - c.last_pass_ok > horizon:
        return False, "no Sentinel reachable"
    down = [t for t, ok in dict(c.haproxy_up).items() if not ok]
    if down or not c.haproxy_up:
        return False, "HAProxy unreachable: " + ", ".join(down or ["not yet seen"])
    grace = ctl.settings.unhealthy_after_s
    failing = sorted(t for t, since in dict(c.failing_since).items() if now - since > grace)
    if failing:
        return False, "HAProxy refuses commands or keeps drift: " + ", ".join(failing)
    stuck = sorted(g for g, since in dict(c.undecided_since).items() if now - since > grace)
    if stuck:
        return False, "undecided: " + ", ".join(stuck)
    return True, "ok"


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every 15 s are not worth a log line


def serve(address: str, ctl: Controller, notifier: WebhookNotifier | None = None) -> WSGIServer:
    addr = Address.parse(address, "metrics_address", default_host="127.0.0.1")
    registry = CollectorRegistry()
    registry.register(_Collector(ctl, notifier))
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            ok, why = health(ctl)
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "text/plain")])
            return [why.encode() + b"\n"]
        result: Iterable[bytes] = metrics_app(environ, start_response)
        return result

    server = make_server(addr.host, addr.port, app, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
