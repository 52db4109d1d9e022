"""deploy/prometheus-alerts.yaml: valid for Prometheus (`promtool check rules`), and every
metric its rules use is one the daemon exports."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from captured import GROUP
from fakes import FakeHAProxy, FakeSentinels
from itest_support import REPO_ROOT
from prometheus_client import CollectorRegistry, generate_latest

from controller.loop import Controller
from controller.metrics import _Collector
from controller.settings import Settings

RULES = REPO_ROOT / "deploy" / "prometheus-alerts.yaml"


def test_promtool_accepts_the_alert_rules() -> None:
    """`promtool check rules` (Debian's prometheus package) finds the rules file valid."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; make test installs it)")
    res = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_metric_in_the_rules_is_exported() -> None:
    """The metric names the alert expressions use all appear in a real scrape of the daemon's
    collector after one pass (counters with their `_total` suffix)."""
    settings = Settings(sentinels=("a:1",), masters=(GROUP,))
    ctl = Controller(settings, FakeSentinels("steady"), [FakeHAProxy()])
    ctl.reconcile("start")
    registry = CollectorRegistry()
    registry.register(_Collector(ctl, None))
    scraped = generate_latest(registry).decode()
    exported = set(re.findall(r"^(?:# TYPE )?(sentinel_haproxy_\w+)", scraped, re.MULTILINE))
    used = set(re.findall(r"\b(sentinel_haproxy_\w+)", RULES.read_text()))
    assert used, "no metric found in the rules"
    assert used <= exported, f"not exported: {sorted(used - exported)}"
