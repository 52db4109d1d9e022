"""`/metrics` and `/healthz` of a real daemon against a LocalStack, scraped over HTTP.

Also runs the container image's HEALTHCHECK (`python -m controller.healthcheck`) against it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests
from itest_support import REPO_ROOT, controller_for, ready, run_cli
from prometheus_client.parser import text_string_to_metric_families

from lab.daemon import clean_env
from lab.localstack import LocalStack, free_port
from lab.procs import start_haproxy
from lab.wait import wait_until

pytestmark = pytest.mark.integration


def scrape(base: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> {sorted labels: value} from /metrics."""
    r = requests.get(base + "/metrics", timeout=5)
    r.raise_for_status()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def healthz(base: str) -> int:
    return requests.get(base + "/healthz", timeout=5).status_code


def run_healthcheck(address: str) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command against a metrics address."""
    return subprocess.run([sys.executable, "-m", "controller.healthcheck"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=30, check=False,
                          env=clean_env({"SENTINEL_HAPROXY_METRICS_ADDRESS": address}))


def test_metrics_and_health_follow_the_daemon(stack: LocalStack, tmp_path: Path) -> None:
    """/metrics counts passes, shows each Sentinel connected and HAProxy up; /healthz is 200,
    turns 503 when HAProxy stops and 200 again when it is back (so does the image's check)."""
    address = f"127.0.0.1:{free_port(['127.0.0.1'])}"
    base = f"http://{address}"
    with controller_for(stack, tmp_path / "daemon.log", metrics_address=address) as d:
        wait_until(lambda: ready(stack, "redis1_master", "redis1a"), 20, "initial state applied")
        sentinels = {str(a) for a in stack.sentinel_addrs}

        def all_connected() -> bool:
            m = scrape(base)
            conn = m.get("sentinel_haproxy_sentinel_connected", {})
            return {dict(k)["sentinel"] for k, v in conn.items() if v == 1} == sentinels

        wait_until(all_connected, 20, "sentinel_connected 1 for every sentinel")
        sock = str(stack.haproxy_socket)

        def verified() -> bool:  # the worker reads back after applying: drift comes after
            return scrape(base).get("sentinel_haproxy_drift", {}).get((("haproxy", sock),)) == 0

        wait_until(verified, 20, "drift 0 after the first sync's read-back")
        m = scrape(base)
        assert m["sentinel_haproxy_passes_total"][()] > 0
        assert m["sentinel_haproxy_commands_applied_total"][()] >= 2  # master + replica ready
        assert m["sentinel_haproxy_commands_failed_total"][()] == 0
        assert m["sentinel_haproxy_undecided_groups"][()] == 0
        assert m["sentinel_haproxy_haproxy_up"][(("haproxy", sock),)] == 1
        assert m["sentinel_haproxy_drift"][(("haproxy", sock),)] == 0
        assert healthz(base) == 200
        assert run_healthcheck(address).returncode == 0

        stack.stop_haproxy()
        wait_until(lambda: healthz(base) == 503, 10, "/healthz 503 with HAProxy stopped")
        assert scrape(base)["sentinel_haproxy_haproxy_up"][(("haproxy", sock),)] == 0
        hc = run_healthcheck(address)
        assert hc.returncode == 1 and "HAProxy unreachable" in hc.stdout, hc.stdout

        stack.start_haproxy()
        wait_until(lambda: healthz(base) == 200, 10, "/healthz 200 with HAProxy back")
        wait_until(lambda: ready(stack, "redis1_master", "redis1a"), 10,
                   "state re-applied to the restarted HAProxy")
        assert run_healthcheck(address).returncode == 0
        d.wait_event("haproxy_unreachable")
    assert d.returncode == 0, d.tail()
    assert not d.problems(), d.problems()


def test_health_is_503_when_no_sentinel_answers(stack: LocalStack, tmp_path: Path) -> None:
    """With every Sentinel stopped /healthz turns 503 once the last good pass is too old."""
    address = f"127.0.0.1:{free_port(['127.0.0.1'])}"
    base = f"http://{address}"
    # resync 0.2 s: the health horizon is 3 * resync + 5 s.
    with controller_for(stack, tmp_path / "daemon.log", resync_interval_s=0.2,
                        metrics_address=address) as d:
        wait_until(lambda: healthz(base) == 200, 20, "/healthz 200")
        for i in range(stack.layout.sentinels):
            stack.kill_sentinel(i)
        wait_until(lambda: healthz(base) == 503, 15, "/healthz 503 with no Sentinel")
        body = requests.get(base + "/healthz", timeout=5).text
        assert "no Sentinel reachable" in body
        m = scrape(base)
        assert set(m["sentinel_haproxy_sentinel_connected"].values()) == {0}
    assert d.returncode == 0, d.tail()
    assert not d.problems(), d.problems()


def test_health_is_503_when_haproxy_refuses_commands(stack: LocalStack, tmp_path: Path) -> None:
    """HAProxy restarted with its admin socket at `level operator` (and no server-state file
    kept: it starts from its config) refuses every state change: /healthz turns 503 after
    `unhealthy_after_s`, naming the socket, and the drift metric is above 0 (it stayed green
    before)."""
    address = f"127.0.0.1:{free_port(['127.0.0.1'])}"
    base = f"http://{address}"
    with controller_for(stack, tmp_path / "daemon.log", metrics_address=address,
                        extra_args=["--unhealthy-after-s", "1", "--haproxy-state-file", ""]
                        ) as d:
        wait_until(lambda: healthz(base) == 200, 20, "/healthz 200")
        cfg = stack.haproxy_config_path
        stack.stop_haproxy()
        cfg.write_text(cfg.read_text().replace("level admin", "level operator"))
        proc = start_haproxy(cfg, stack.haproxy_socket, tmp_path / "operator", name="operator")
        try:
            wait_until(lambda: healthz(base) == 503 and "refuses commands" in requests.get(
                base + "/healthz", timeout=5).text, 20, "/healthz 503 on refused commands")
            sock = str(stack.haproxy_socket)
            assert scrape(base)["sentinel_haproxy_drift"][(("haproxy", sock),)] > 0
        finally:
            proc.stop()
    assert not d.problems(), d.problems()


def test_status_fails_when_haproxy_has_no_backend_for_a_group(stack: LocalStack) -> None:
    """`status` against a config without the group's write backend exits 1 and names it."""
    res = run_cli(stack, "status", "--write-backend", "{master}_nosuch")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "CONFIG: backend_missing: no backend 'redis1_nosuch'" in res.stdout
    assert "HAProxy's config lacks what Sentinel needs" in res.stdout
