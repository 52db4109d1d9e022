"""The shipped HAProxy, Redis and Sentinel configs: validity and the properties the design needs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lab.localstack import (
    HAPROXY_CLASSIC_CONFIG,
    HAPROXY_CONFIG,
    HAPROXY_REDIS_HA_CONFIG,
    REDIS_CONFIG,
    SENTINEL_CONFIG,
    Layout,
    LocalStackError,
    render_haproxy_config,
    render_redis_config,
    render_sentinel_config,
    write_haproxy_config,
)
from lab.procs import HAPROXY

GROUPS = ("redis1", "redis2", "redis3")
REDIS_HA_CONFIG = HAPROXY_REDIS_HA_CONFIG
TEMPLATES = [HAPROXY_CONFIG, HAPROXY_CLASSIC_CONFIG, REDIS_HA_CONFIG]
IDS = ["ctl", "classic", "redis-ha"]


def _no_network_prefix() -> list[str]:
    """``unshare -n`` where it works: unresolvable container names then fail at once instead of
    waiting for DNS timeouts (5 s each were seen on this sandbox's resolver)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    probe = subprocess.run([unshare, "-n", "true"], capture_output=True, timeout=10, check=False)
    return [unshare, "-n"] if probe.returncode == 0 else []


def haproxy_check(cfg: Path, offline: bool = False) -> subprocess.CompletedProcess[str]:
    """`haproxy -c` on `cfg`, with the shipped (empty) lease.map beside it when none is there
    (the configs name it relative to themselves)."""
    if not (cfg.parent / "lease.map").exists():
        shutil.copyfile(HAPROXY_CONFIG.parent / "lease.map", cfg.parent / "lease.map")
    prefix = _no_network_prefix() if offline else []
    return subprocess.run(
        [*prefix, HAPROXY, "-c", "-f", str(cfg)],
        capture_output=True, text=True, timeout=120, check=False,
    )


def sections(text: str) -> dict[str, list[str]]:
    """'backend redis1_master' -> its non-comment body lines."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            current = out.setdefault(line.strip(), [])
        elif current is not None:
            current.append(line.strip())
    return out


def server_lines(text: str) -> dict[str, list[list[str]]]:
    return {
        name: [line.split() for line in body if line.startswith("server ")]
        for name, body in sections(text).items()
        if name.startswith("backend ")
    }


@pytest.mark.parametrize("template", TEMPLATES, ids=IDS)
def test_substituted_haproxy_config_passes_check(tmp_path: Path, template: Path) -> None:
    """The HAProxy config rendered for local processes passes `haproxy -c`."""
    layout = Layout.for_tests(haproxy_config=template)
    cfg = tmp_path / "haproxy.cfg"
    write_haproxy_config(layout, tmp_path / "admin.sock", cfg)
    res = haproxy_check(cfg)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "could not resolve" not in res.stderr


@pytest.mark.parametrize("template", TEMPLATES, ids=IDS)
def test_shipped_haproxy_config_passes_check_as_is(template: Path) -> None:
    """The shipped HAProxy config passes `haproxy -c` even where container names don't resolve."""
    res = haproxy_check(template, offline=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_rendered_haproxy_config_uses_local_addresses_and_ports(tmp_path: Path) -> None:
    """Rendering puts frontends/stats on 127.0.0.1 ports of the layout and servers on node IPs."""
    layout = Layout.for_tests(groups=("redis2",))
    sock = tmp_path / "admin.sock"
    text = render_haproxy_config(layout, sock)
    secs = sections(text)
    assert f"bind 127.0.0.1:{layout.write_port('redis2')}" in secs["frontend redis2_write"]
    assert f"bind 127.0.0.1:{layout.read_port('redis2')}" in secs["frontend redis2_read"]
    assert f"bind 127.0.0.1:{layout.stats_port}" in secs["listen stats"]
    assert any(line.startswith(f"stats socket {sock} ") for line in secs["global"])
    assert not any("redis1" in name or "redis3" in name for name in secs)
    nodes = layout.nodes()
    for servers in server_lines(text).values():
        for s in servers:
            node = s[1].removesuffix("-fallback")
            assert s[2] == f"{nodes[node].host}:{layout.redis_port}"


def test_controller_config_write_servers_disabled_without_checks() -> None:
    """Every write server of the controller layout is `disabled`, shuts sessions down, and has
    no check (only the controller decides who takes writes)."""
    text = HAPROXY_CONFIG.read_text()
    backends = server_lines(text)
    assert set(backends) == {f"backend {g}_{k}" for g in GROUPS for k in ("master", "replicas")}
    for g in GROUPS:
        servers = backends[f"backend {g}_master"]
        assert [(s[1], s[2]) for s in servers] == [(f"{g}a", f"{g}a:6379"), (f"{g}b", f"{g}b:6379")]
        for s in servers:
            line = " ".join(s)
            assert "disabled" in s, line
            assert "on-marked-down shutdown-sessions" in line, line
            assert not {"check", "agent-check"} & set(s), line
        body = sections(text)[f"backend {g}_master"]
        for keyword in ("retries 10", "option redispatch 1", "timeout connect 100ms"):
            assert keyword in body, body
    assert "tcp-check" not in text and "httpchk" not in text


def test_controller_config_read_backends_fall_back_by_themselves() -> None:
    """Each read backend lists every node once as a replica and once as the `backup` read
    fallback, all `disabled` until the controller says; a dead server is taken out by plain
    L4 checks and observed connection errors, and a failed connection is redispatched at once."""
    secs = sections(HAPROXY_CONFIG.read_text())
    for g in GROUPS:
        body = secs[f"backend {g}_replicas"]
        servers = [line.split() for line in body if line.startswith("server ")]
        assert [(s[1], s[2], s[3:]) for s in servers] == [
            (f"{g}a", f"{g}a:6379", []), (f"{g}b", f"{g}b:6379", []),
            (f"{g}a-fallback", f"{g}a:6379", ["backup"]),
            (f"{g}b-fallback", f"{g}b:6379", ["backup"]),
        ]
        (default,) = [line.split() for line in body if line.startswith("default-server ")]
        for word in ("disabled", "check", "observe", "on-error"):
            assert word in default, body
        line = " ".join(default)
        assert "observe layer4" in line and "on-error mark-down" in line
        assert "shutdown-sessions" not in line, "readers are never cut"
        for keyword in ("balance roundrobin", "retries 3", "option redispatch 1",
                        "timeout connect 50ms"):
            assert keyword in body, body


def test_controller_config_frontends_socket_and_stats() -> None:
    """Each group has write/read frontends on 5000+2i/5001+2i, an admin socket and a stats page."""
    secs = sections(HAPROXY_CONFIG.read_text())
    for i, g in enumerate(GROUPS):
        write, read = secs[f"frontend {g}_write"], secs[f"frontend {g}_read"]
        assert write == [
            f"bind :{5000 + 2 * i}",
            "tcp-request connection set-var(sess.now_ms) date(0,ms)",
            "tcp-request connection reject if { str(lease),map_str_int(lease.map,0),"
            "sub(sess.now_ms) -m int le 0 }",
            f"default_backend {g}_master",
        ], "the write lease guards every write frontend"
        assert read == [f"bind :{5001 + 2 * i}", f"default_backend {g}_replicas"]
    assert "stats socket /var/run/haproxy/admin.sock mode 660 level admin" in secs["global"]
    assert "stats timeout 30s" in secs["global"]
    assert "bind :9000" in secs["listen stats"] and "stats uri /" in secs["listen stats"]
    assert "mode tcp" in secs["defaults"]


def test_classic_config_role_checks() -> None:
    """The classic layout checks every server's role every 1 s and disables none."""
    text = HAPROXY_CLASSIC_CONFIG.read_text()
    secs = sections(text)
    for name, servers in server_lines(text).items():
        body = secs[name]
        role = "master" if name.endswith("_master") else "slave"
        assert "option tcp-check" in body and "timeout check 1s" in body
        assert f"tcp-check expect string role:{role}" in body
        assert body.index("tcp-check send PING\\r\\n") < body.index("tcp-check expect string +PONG")
        assert "tcp-check send QUIT\\r\\n" in body and "tcp-check expect string +OK" in body
        assert len(servers) == 2
        for s in servers:
            assert "check inter 1s fall 2 rise 2" in " ".join(s)
            assert "disabled" not in s


def test_redis_ha_config_checks_role_and_sentinel_votes() -> None:
    """The redis-ha layout pins writes to a node passing role:master that 2 Sentinels name."""
    text = REDIS_HA_CONFIG.read_text()
    secs = sections(text)
    backends = server_lines(text)
    assert "charts/redis-ha/templates/_configs.tpl" in text  # the header names its source
    for i, g in enumerate(GROUPS):
        assert secs[f"frontend {g}_write"] == [f"bind :{5000 + 2 * i}",
                                               f"default_backend {g}_master"]
        assert secs[f"frontend {g}_read"] == [f"bind :{5001 + 2 * i}",
                                              f"default_backend {g}_replicas"]
        for node in (f"{g}a", f"{g}b"):
            name = f"backend check_if_{node}_is_master"
            body = secs[name]
            assert f"tcp-check send SENTINEL\\ get-master-addr-by-name\\ {g}\\r\\n" in body
            assert f"tcp-check expect string {node}" in body
            assert [s[1:] for s in backends[name]] == [
                [f"sentinel{k}", f"sentinel{k}:26379", "check", "inter", "1s", "init-addr",
                 "last,libc,none"] for k in (1, 2, 3)
            ]
            assert (f"use-server {node} if {{ srv_is_up({node}) }} "
                    f"{{ nbsrv(check_if_{node}_is_master) ge 2 }}") in secs[f"backend {g}_master"]
        for kind, role in (("master", "master"), ("replicas", "slave")):
            body = secs[f"backend {g}_{kind}"]
            assert "timeout check 2s" in body and f"tcp-check expect string role:{role}" in body
            assert [(s[1], s[2]) for s in backends[f"backend {g}_{kind}"]] == [
                (f"{g}a", f"{g}a:6379"), (f"{g}b", f"{g}b:6379")]
            for s in backends[f"backend {g}_{kind}"]:
                assert "check inter 1s fall 1 rise 1" in " ".join(s)
        assert not any(line.startswith("use-server") for line in secs[f"backend {g}_replicas"])


def test_rendered_redis_ha_config_points_checks_at_local_sentinels_and_nodes(
    tmp_path: Path,
) -> None:
    """Rendering the redis-ha layout rewrites Sentinel servers and the node named in each vote."""
    layout = Layout.for_tests(groups=("redis2",), haproxy_config=REDIS_HA_CONFIG)
    text = render_haproxy_config(layout, tmp_path / "admin.sock")
    secs = sections(text)
    nodes = layout.nodes()
    assert not any("redis1" in name or "redis3" in name for name in secs)
    sentinels = [f"{h}:{layout.sentinel_port}" for h in layout.sentinel_hosts()]
    for node in ("redis2a", "redis2b"):
        name = f"backend check_if_{node}_is_master"
        assert f"tcp-check expect string {nodes[node].host}" in secs[name]
        assert [(s[1], s[2]) for s in server_lines(text)[name]] == [
            (f"sentinel{k + 1}", addr) for k, addr in enumerate(sentinels)]
    for kind in ("master", "replicas"):
        assert [(s[1], s[2]) for s in server_lines(text)[f"backend redis2_{kind}"]] == [
            (n, f"{nodes[n].host}:{layout.redis_port}") for n in ("redis2a", "redis2b")]
    assert "tcp-check expect string role:master" in secs["backend redis2_master"]
    with pytest.raises(LocalStackError, match="sentinel3"):
        render_haproxy_config(
            Layout(groups=("redis1",), sentinels=2, haproxy_config=REDIS_HA_CONFIG),
            tmp_path / "admin.sock")


def test_sentinel_conf_monitors_three_groups_with_safe_timing() -> None:
    """sentinel.conf monitors redis1..3 (node a, quorum 2) with down-after-milliseconds >= 2000."""
    text = SENTINEL_CONFIG.read_text()
    monitors = re.findall(r"^sentinel monitor (\S+) (\S+) (\d+) (\d+)$", text, re.MULTILINE)
    assert monitors == [(g, f"{g}a", "6379", "2") for g in GROUPS]
    down_after = dict(re.findall(r"^sentinel down-after-milliseconds (\S+) (\d+)$", text, re.M))
    assert set(down_after) == set(GROUPS)
    assert all(int(v) >= 2000 for v in down_after.values())
    assert re.search(r"^sentinel resolve-hostnames yes$", text, re.M)
    assert re.search(r"^port 26379$", text, re.M)


def test_redis_conf_minimal_settings() -> None:
    """redis.conf listens on 6379 without persistence and with diskless, immediate resync."""
    lines = {line.strip() for line in REDIS_CONFIG.read_text().splitlines()}
    for want in ("port 6379", "protected-mode no", 'save ""', "appendonly no",
                 "replica-read-only yes", "repl-diskless-sync yes", "repl-diskless-sync-delay 0"):
        assert want in lines
    assert not any(line.startswith(("replicaof", "slaveof")) for line in lines)


def test_rendered_sentinel_and_redis_configs(tmp_path: Path) -> None:
    """Rendering substitutes node IPs, ports and timings and keeps only the layout's groups."""
    layout = Layout(groups=("redis1", "redis3"), redis_port=7001, sentinel_port=7100,
                    down_after_ms=3000, failover_timeout_ms=5000)
    text = render_sentinel_config(layout, 1, tmp_path)
    nodes = layout.nodes()
    assert "port 7100" in text.splitlines()
    assert "bind 127.0.0.21" in text.splitlines()
    assert f"sentinel monitor redis3 {nodes['redis3a'].host} 7001 2" in text
    assert "sentinel down-after-milliseconds redis1 3000" in text
    assert "sentinel failover-timeout redis3 5000" in text
    assert "redis2" not in re.sub(r"#.*", "", text)
    rtext = render_redis_config(layout, nodes["redis3b"], tmp_path).splitlines()
    assert "port 7001" in rtext and f"bind {nodes['redis3b'].host}" in rtext
    assert "port 6379" not in rtext
