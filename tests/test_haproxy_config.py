"""`sentinel-haproxy config` (controller.haproxy_config): ports, names, and HAProxy's own check.

`haproxy -c` (Debian's HAProxy 2.6) must accept the output for 1, 3 and 50 groups; the shipped
haproxy/haproxy-slots.cfg is exactly the generator's output for the reference groups.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_configs import haproxy_check, sections

from controller.haproxy_config import Layout, ports, render
from controller.settings import load

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "haproxy" / "haproxy-slots.cfg"


def test_default_ports_are_the_reference_layout_in_name_order() -> None:
    """5000/5001 for the first group by name, +2 for each next one."""
    assert ports(["redis3", "redis1", "redis2"], Layout()) == {
        "redis1": (5000, 5001), "redis2": (5002, 5003), "redis3": (5004, 5005)}


def test_pinned_ports_stay_and_the_others_skip_them() -> None:
    """A pinned group keeps its ports; the rest skip pinned ports and the stats port."""
    layout = Layout(first_port=8998, stats_port=9000, fixed_ports={"b": (9002, 9003)})
    assert ports(["a", "b", "c", "d"], layout) == {
        "a": (8998, 8999), "b": (9002, 9003), "c": (9004, 9005), "d": (9006, 9007)}


def test_names_haproxy_cannot_take_are_refused() -> None:
    """A group name with a space or a slash cannot become a proxy name: a clear error."""
    with pytest.raises(ValueError, match="letters, digits"):
        render(["bad name"], Layout())


@pytest.mark.parametrize("count", [1, 3, 50])
def test_generated_config_passes_haproxy_check(tmp_path: Path, count: int) -> None:
    """HAProxy accepts the generated file for 1, 3 and 50 groups, with every backend's slots."""
    groups = [f"group{i:02d}" for i in range(count)]
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(render(groups, Layout(admin_socket=str(tmp_path / "admin.sock"))))
    res = haproxy_check(cfg)
    assert res.returncode == 0, res.stdout + res.stderr
    secs = sections(cfg.read_text())
    assert sum(1 for s in secs if s.startswith("backend ")) == 2 * count
    for g in groups:
        assert "server-template slot 1-8 127.0.0.1:1 disabled on-marked-down shutdown-sessions" \
            in secs[f"backend {g}_master"]
        assert "server-template slot-fallback 1-2 127.0.0.1:1 backup" \
            in secs[f"backend {g}_replicas"]


def test_ipv6_bind_address_passes_haproxy_check(tmp_path: Path) -> None:
    """Frontends and stats on ::1 are written in brackets and accepted."""
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(render(["g"], Layout(bind_address="::1",
                                        admin_socket=str(tmp_path / "admin.sock"))))
    assert "bind [::1]:5000" in cfg.read_text()
    res = haproxy_check(cfg)
    assert res.returncode == 0, res.stdout + res.stderr


def test_shipped_slots_config_is_the_generator_output() -> None:
    """haproxy/haproxy-slots.cfg = `sentinel-haproxy config` for redis1..3 (regenerate with
    `sentinel-haproxy config --master redis1 --master redis2 --master redis3 -o ...`)."""
    from controller import __version__
    from controller.cli import layout_of
    from controller.settings import Settings

    want = render(["redis1", "redis2", "redis3"], layout_of(Settings()), version=__version__)
    assert SHIPPED.read_text() == want


def test_sections_only_are_the_lines_to_add() -> None:
    """`--sections-only --master g` prints that group's frontends and backends, with the ports
    it has among every group (here the settings' pinned ones), nothing global."""
    res = subprocess.run([sys.executable, "-m", "controller", "config", "--master", "redis2",
                          "--sections-only", "--group-ports", "redis2=6000:6001"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    out = res.stdout
    assert res.returncode == 0, res.stderr
    assert "global" not in out and "frontend redis2_write\n    bind :6000" in out
    assert "backend redis2_replicas" in out and "redis1" not in out


def test_config_settings_come_from_the_settings_file(tmp_path: Path) -> None:
    """Ports and slots can be pinned per group in the TOML settings file."""
    cfg = tmp_path / "s.toml"
    cfg.write_text('group_ports = ["redis1=7000:7001"]\ngroup_slots = ["redis1=16"]\n'
                   "slots_per_backend = 4\n")
    s = load({}, {}, str(cfg))
    assert s.fixed_ports() == {"redis1": (7000, 7001)} and s.slots_for() == {"redis1": 16}
    from controller.cli import layout_of

    text = render(["redis1", "redis2"], layout_of(s))
    assert "server-template slot 1-16 " in text and "server-template slot 1-4 " in text


def test_config_without_sentinel_or_group_is_a_usage_error() -> None:
    """Nothing to generate from: exit 2 with a message naming both ways."""
    res = subprocess.run([sys.executable, "-m", "controller", "config"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60, check=False)
    assert res.returncode == 2
    assert "--sentinel" in res.stderr and "--master" in res.stderr


def test_config_output_file_gets_its_lease_map_and_passes_haproxy_check(tmp_path: Path) -> None:
    """`config -o FILE` also writes the (empty) lease map the write frontends name, next to
    the file, when none is there: HAProxy then accepts the pair as written."""
    out = tmp_path / "haproxy.cfg"
    res = subprocess.run([sys.executable, "-m", "controller", "config", "--master", "g1",
                          "--admin-socket", str(tmp_path / "admin.sock"), "-o", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert "lease.map" in res.stderr and (tmp_path / "lease.map").exists()
    assert "map_str_int(lease.map,0)" in out.read_text()
    check = haproxy_check(out)
    assert check.returncode == 0, check.stdout + check.stderr
