"""The compose stack and the sidecar image on a real Docker engine (marker `docker`).

A private dockerd (tests/docker_engine.py) gets stand-ins for redis:7.0, haproxy:2.6 and
python:3.11-slim built from Debian's packages (tests/standin_images/ says where each one differs
from the official image), builds the sidecar from the shipped Dockerfile and runs the shipped
compose/docker-compose.yml with an env file made from compose/.env.example, under a throwaway
project name. Then, as a user would: redis-cli on the published ports, the stats page,
`sentinel-haproxy status`, the health check, /metrics; `docker kill` of redis1's master under a
writer; `docker-compose down -v`.

Clients reach the stack from the host: the published ports (5000-5005, 9000) through docker-proxy,
the userland proxy, which needs no iptables (the daemon runs with --iptables=false); one node
watched directly (the returning old master) on its IP on the compose network's bridge, which
the host is attached to. Skipped, saying why, where no engine can run (not root, docker.io or
debootstrap missing, dockerd does not start, no Debian mirror).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from compose_stack import (
    HOST,
    ComposeStack,
    compose_services,
    ports_in_use,
    published_ports,
)
from docker_engine import (
    Engine,
    EngineUnavailable,
    cache_dir,
    ensure_standins,
    exclusive,
    missing_prerequisites,
    wait_for,
)

from controller.model import Address
from lab.probes import Writer, WriteSample
from lab.resp import info_fields
from lab.wait import WaitTimeout

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parent.parent
GROUPS = {"redis1": (5000, 5001), "redis2": (5002, 5003), "redis3": (5004, 5005)}
STATS_PORT = 9000
IP_FORMAT = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
CONTROLLER_UID = "10001"


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    """A private dockerd with the stand-in images; stopped by PID and removed afterwards."""
    why = missing_prerequisites()
    if why:
        pytest.skip("no private Docker engine here: " + "; ".join(why))
    cache = cache_dir()
    with exclusive(cache / "engine.lock", timeout_s=300):
        for note in Engine.reap_stale():
            print(f"\n{note}")
        eng = Engine()
        problems: list[str] = []
        try:
            t0 = time.monotonic()
            eng.start()
            how = ensure_standins(eng, cache)
            print(f"\nengine up, stand-in images {how}, in {time.monotonic() - t0:.1f} s")
            yield eng
        except EngineUnavailable as e:
            pytest.skip(f"no private Docker engine here: {e}")
        finally:
            problems = eng.stop() + eng.remove()
        assert not problems, problems


@pytest.fixture(scope="module")
def sidecar_image(engine: Engine) -> str:
    """The controller image, built from the repository's Dockerfile as shipped, with the tag
    the compose file runs."""
    tag = str(compose_services()["controller"]["image"])
    t0 = time.monotonic()
    engine.build(tag, ROOT, ROOT / "Dockerfile", "build-sidecar.log")
    print(f"\nsidecar image built in {time.monotonic() - t0:.1f} s")
    return tag


@pytest.fixture(scope="module")
def stack(engine: Engine, sidecar_image: str) -> Iterator[ComposeStack]:
    """The compose stack, up and serving writes and reads on redis1; always taken down."""
    busy = ports_in_use(published_ports())
    assert not busy, f"host ports the compose file publishes are taken: {busy}"
    st = ComposeStack(engine)
    try:
        t0 = time.monotonic()
        st.up()
        with logs_on_failure(st):
            wait_for(lambda: st.redis_cli(5000, "SET", "ready", "1") == "OK", 90,
                     "writes through HAProxy on 5000", interval_s=0.5)
            wait_for(lambda: st.redis_cli(5001, "ROLE").startswith("slave"), 60,
                     "a replica behind the read port 5001", interval_s=0.5)
        print(f"\nstack up and serving in {time.monotonic() - t0:.1f} s")
        yield st
    finally:
        if not st.is_down:
            st.down()


@contextlib.contextmanager
def logs_on_failure(st: ComposeStack) -> Iterator[None]:
    """Print the stack's recent logs when the block raises (pytest shows them)."""
    try:
        yield
    except BaseException:
        print(f"---- docker-compose logs (tail)\n{st.logs(80)}")
        raise


def test_sidecar_image_is_non_root_with_the_cli_as_entrypoint(
    engine: Engine, sidecar_image: str
) -> None:
    """The image built from the shipped Dockerfile runs `sentinel-haproxy` as uid 10001 and
    declares the /healthz health check."""
    out = engine.docker("run", "--rm", sidecar_image, "--version").stdout
    assert out.startswith("sentinel-haproxy "), out
    uid = engine.docker("run", "--rm", "--entrypoint", "id", sidecar_image, "-u").stdout
    assert uid.strip() == CONTROLLER_UID
    check = engine.docker("inspect", "-f", "{{json .Config.Healthcheck.Test}}",
                          sidecar_image).stdout
    assert "controller.healthcheck" in check, check


def test_quick_start_serves_writes_reads_stats_status_health_and_metrics(
    stack: ComposeStack,
) -> None:
    """What the quick start promises, from the host: SET/GET through each write port, the
    value on each read port, the stats page, `status` in sync, the controller container
    healthy, /metrics answering inside it."""
    with logs_on_failure(stack):
        for group, (write_port, read_port) in GROUPS.items():
            key = f"quickstart:{group}"
            assert stack.redis_cli(write_port, "SET", key, "v1") == "OK", group
            assert stack.redis_cli(write_port, "GET", key) == "v1", group
            wait_for(functools.partial(replicated, stack, read_port, key, "v1"), 30,
                     f"{key} on the read port {read_port}", interval_s=0.2)
            role = stack.redis_cli(read_port, "ROLE").split()
            assert role[0] == "slave", (group, role)

        status, page = stack.http_get(STATS_PORT, "/")
        assert status == 200 and "redis1_master" in page and "redis3_replicas" in page

        assert in_sync(stack, "group redis1: master "), stack.exec(
            "controller", "sentinel-haproxy", "status").stdout
        uid = stack.exec("controller", "id", "-u").stdout.strip()
        assert uid == CONTROLLER_UID

        # The image's HEALTHCHECK: first run 10 s after start (interval), healthy on success.
        wait_for(lambda: stack.health("controller") == "healthy", 90,
                 "the controller container's health check to report healthy", interval_s=1)

        metrics = metrics_text(stack)
        assert re.search(r"^sentinel_haproxy_passes_total \d", metrics, re.M), metrics[:2000]
        assert re.search(r"^sentinel_haproxy_undecided_groups 0", metrics, re.M)


def test_processes_run_as_the_images_users_and_share_the_socket(stack: ComposeStack) -> None:
    """Redis and Sentinel dropped root (uid 999), HAProxy runs as 99 and its admin socket and
    master CLI are 99:99 mode 660 in the shared volume (compose's socket-init), which the
    controller (10001, group 99) can open and ask."""
    for service in ("redis1a", "sentinel1"):
        res = stack.exec(service, "sh", "-c", "grep ^Uid: /proc/1/status")
        assert res.stdout.split()[1:3] == ["999", "999"], (service, res.stdout + res.stderr)
    assert stack.exec("haproxy", "id", "-u").stdout.strip() == "99"
    # The admin socket, and the master CLI beside it (compose's `-S ...,mode,660`)
    sock, master = "/var/run/haproxy/admin.sock", "/var/run/haproxy/master.sock"
    for path in (sock, master):
        res = stack.exec("haproxy", "stat", "-c", "%u:%g %a", path)
        assert res.stdout.strip() == "99:99 660", (path, res.stdout + res.stderr)
    code = ("import socket; s = socket.socket(socket.AF_UNIX); "
            f"s.connect('{sock}'); s.sendall(b'show info\\n'); print(s.recv(200).decode())")
    res = stack.exec("controller", "python", "-c", code)
    assert res.returncode == 0 and "Name: HAProxy" in res.stdout, res.stdout + res.stderr
    # The controller asks the master CLI about old workers: no reload yet, so none.
    code = ("from controller.haproxy import HAProxyMaster; "
            f"print(HAProxyMaster('{master}').old_workers())")
    res = stack.exec("controller", "python", "-c", code)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr


def test_docker_kill_of_the_master_loses_no_acknowledged_write(stack: ComposeStack) -> None:
    """`docker kill` of redis1's master under a writer: the write port follows Sentinel to the
    replica, every acknowledged key is on the final master, and the old master, back with
    `docker start` on another address (a container took its old one meanwhile: no address is
    fixed), never executes a client write before it is a replica again, then serves reads on
    its new address."""
    old, new = "redis1a", "redis1b"
    old_ip, new_ip = stack.ip(old), stack.ip(new)
    write_port = GROUPS["redis1"][0]
    pw = stack.redis_password
    with logs_on_failure(stack):
        assert run_id_behind(stack, write_port) == node_info(stack, old)["run_id"]
        new_run_id = node_info(stack, new)["run_id"]

        stop = threading.Event()
        writer = Writer(Address(HOST, write_port), "w", 0, stop, interval_s=0.002, password=pw)
        writer.start()
        try:
            wait_for(lambda: len(writer.acked()) >= 200, 30, "200 writes acknowledged")
            t_kill = time.time()
            stack.engine.docker("kill", stack.container(old))
            wait_for(lambda: run_id_behind(stack, write_port) == new_run_id, 60,
                     f"the write port to reach {new} as master")
            wait_for(lambda: len(writer.acked(t_kill)) >= 100, 30,
                     "writes acknowledged again after the kill")
            t_back = time.time()

            # Docker gives a new container the lowest free address: the old master's.
            squatter = stack.squat(stack.network("redis"))
            assert stack.engine.docker("inspect", "-f", IP_FORMAT, squatter).stdout.strip() \
                == old_ip, f"the squatter did not get {old}'s address {old_ip}"
            stack.engine.docker("start", stack.container(old))
            back_ip = stack.ip(old, fresh=True)
            assert back_ip != old_ip
            samples = watch_returning_master(stack, old, new, timeout_s=60)
            wait_for(lambda: len(writer.acked(time.time() - 0.5)) >= 20, 30,
                     "writes acknowledged after the old master rejoined")
        finally:
            stop.set()
            writer.join(10)

        as_master = [s for s in samples if s["role"] == "master"]
        wrote = [s for s in as_master if "cmdstat_set" in s or s.get("db0")]
        assert not wrote, f"the returning old master executed client writes: {wrote[:3]}"
        if as_master:  # it came back as a master (its own config) until Sentinel converted it
            window = (as_master[0]["t"], samples[-1]["t"])
            assert writer.acked(*window), "no write was attempted in its master window"

        # Named as the node announces itself (announce-hostnames, --replica-announce-ip).
        final = sentinel_master(stack, "redis1")
        assert final == (new, 6379), final
        acked = writer.acked()
        missing = unreadable_keys(stack, new, acked)
        assert not missing, (f"{len(missing)} of {len(acked)} acknowledged writes lost, "
                             f"e.g. {missing[:5]}")
        outage = longest_gap([w.t for w in acked], t_kill, t_back)
        master_s = samples[-1]["t"] - as_master[0]["t"] if as_master else 0.0
        errors = len(writer.samples) - len(acked)
        print(f"\nfailover: {len(acked)} writes acked, {errors} errors, 0 lost; "
              f"write outage {outage:.2f} s; old master {old_ip} back (at {back_ip}) as master for "
              f"{master_s:.1f} s ({len(as_master)} samples), executed no write")

        # The rejoined replica enters the read backend once enough Sentinels have seen its link
        # up (each polls a replica's INFO every 10 s) and the daemon's next pass runs. Until
        # then `status` may already say "in sync": the desired state leaves it out on purpose.
        ready = re.compile(rf"^\s+redis1_replicas\s+\S+\s+{re.escape(back_ip)}:6379\s+ready ",
                           re.M)

        def rejoined() -> bool:
            return in_sync(stack, f"group redis1: master {new_ip}:6379") and bool(
                ready.search(stack.exec("controller", "sentinel-haproxy", "status").stdout))

        wait_for(rejoined, 45, f"`sentinel-haproxy status` in sync with {back_ip} ready for reads")
        m = re.search(r"^sentinel_haproxy_failovers_seen_total (\S+)", metrics_text(stack), re.M)
        assert m and float(m.group(1)) >= 1, "failover not counted in /metrics"


def test_down_removes_every_container_network_and_volume(stack: ComposeStack) -> None:
    """`docker-compose down -v` leaves no container, network (nor its bridge) or volume."""
    networks = stack.network_ids()
    assert networks, "the project has no network"
    res = stack.down()
    assert res.returncode == 0, res.stdout + res.stderr
    assert stack.engine.leftovers() == []
    for net in networks:
        assert not Path(f"/sys/class/net/br-{net[:12]}").exists(), f"bridge br-{net[:12]} left"


# --------------------------------------------------------------------------- helpers


def metrics_text(stack: ComposeStack) -> str:
    """GET /metrics inside the controller container (it binds 127.0.0.1:9121 there)."""
    code = ("import urllib.request; print(urllib.request.urlopen("
            "'http://127.0.0.1:9121/metrics', timeout=5).read().decode())")
    res = stack.exec("controller", "python", "-c", code)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def in_sync(stack: ComposeStack, expect: str) -> bool:
    """`docker-compose exec controller sentinel-haproxy status` exits 0, says "in sync" and
    contains ``expect``."""
    res = stack.exec("controller", "sentinel-haproxy", "status")
    out = res.stdout.rstrip()
    return res.returncode == 0 and out.endswith("in sync") and expect in out


def replicated(stack: ComposeStack, port: int, key: str, value: str) -> bool:
    return stack.redis_cli(port, "GET", key) == value


def node_info(stack: ComposeStack, service: str, section: str = "server") -> dict[str, Any]:
    """`INFO section` of one node, asked on its bridge IP (as redis-py parses it)."""
    client = stack.node(service)
    try:
        info: dict[str, Any] = client.info(section)
        return info
    finally:
        client.close()


def run_id_behind(stack: ComposeStack, port: int) -> str | None:
    """run_id of the node a new connection to ``port`` reaches (None when it is refused)."""
    out = stack.redis_cli(port, "INFO", "server")
    return info_fields(out).get("run_id")


def watch_returning_master(stack: ComposeStack, service: str, master: str,
                           timeout_s: float) -> list[dict[str, Any]]:
    """Sample `INFO all` of ``service`` (restarting) every 50 ms until it replicates from the
    service ``master`` (Sentinel's REPLICAOF names it: announce-hostnames) with its link up;
    each sample keeps role, SET calls and keyspace."""
    samples: list[dict[str, Any]] = []
    t0 = time.monotonic()

    def rejoined() -> bool:
        try:
            info = node_info(stack, service, "all")
        except redis.RedisError:  # not listening yet
            return False
        sample: dict[str, Any] = {"t": time.time(), "role": info.get("role")}
        if "cmdstat_set" in info:
            sample["cmdstat_set"] = info["cmdstat_set"]
        if "db0" in info:
            sample["db0"] = info["db0"]
        samples.append(sample)
        return (info.get("role") == "slave" and info.get("master_host") == master
                and info.get("master_link_status") == "up")

    try:
        wait_for(rejoined, timeout_s, f"{service} to rejoin as a replica of {master}",
                 interval_s=0.05)
    except WaitTimeout as e:
        raise AssertionError(f"{e}; last samples: {samples[-3:]}") from None
    assert samples and time.monotonic() - t0 <= timeout_s
    return samples


def sentinel_master(stack: ComposeStack, group: str) -> tuple[str, int]:
    """The master every Sentinel names for ``group`` (they must agree)."""
    seen = set()
    for s in ("sentinel1", "sentinel2", "sentinel3"):
        client = stack.sentinel(s)
        try:
            host, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", group)
        finally:
            client.close()
        seen.add((str(host), int(port)))
    assert len(seen) == 1, f"the Sentinels disagree: {seen}"
    return seen.pop()


def unreadable_keys(stack: ComposeStack, service: str, acked: list[WriteSample]) -> list[str]:
    """Keys of acknowledged writes whose value is not on ``service``."""
    client = stack.node(service)
    missing = []
    try:
        for i in range(0, len(acked), 1000):
            chunk = acked[i:i + 1000]
            for w, value in zip(chunk, client.mget([w.key for w in chunk]), strict=True):
                if value != str(w.seq):
                    missing.append(w.key)
    finally:
        client.close()
    return missing


def longest_gap(acked_at: list[float], start: float, end: float) -> float:
    """Longest time without an acknowledgement between ``start`` and ``end``."""
    times = [start, *(at for at in acked_at if start < at < end), end]
    return max(b - a for a, b in itertools.pairwise(times))
