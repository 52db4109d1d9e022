"""The shipped compose/docker-compose.yml on a private engine (tests/docker_engine.py), driven
the way a user drives it: docker-compose up/exec/down with a throwaway project name, redis-cli
and HTTP on the published host ports, docker kill/start of a container. Plus a writer thread
that SETs through the write port and remembers which keys were acknowledged, and direct
connections to a node on its bridge IP (to watch one node, e.g. a returning old master).

What it must not do: change the compose files or write compose/.env (the env file is a copy of
compose/.env.example with generated passwords, in the engine's temp directory), wait without a
deadline, or leave the stack up (the test fixture always calls :meth:`ComposeStack.down`).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import redis
import yaml
from docker_engine import Engine
from redis.backoff import NoBackoff
from redis.retry import Retry

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "compose" / ".env.example"
HOST = "127.0.0.1"


def compose_services() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    svc = data["services"]
    assert isinstance(svc, dict)
    return svc


def published_ports() -> list[int]:
    """Host ports the compose file publishes (every service)."""
    out: list[int] = []
    for s in compose_services().values():
        for spec in s.get("ports", []):
            lo, _, hi = str(spec).split(":")[0].partition("-")
            out += range(int(lo), int(hi or lo) + 1)
    return sorted(out)


def ports_in_use(ports: list[int]) -> list[int]:
    """Ports a listener already holds on this host (docker-proxy could not bind them)."""
    busy = []
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                busy.append(port)
    return busy


def write_env_file(path: Path) -> dict[str, str]:
    """compose/.env.example with each `change-me...` value replaced by a generated password,
    written to ``path`` (mode 600). Returns the values."""
    values: dict[str, str] = {}
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^([A-Z_][A-Z0-9_]*)=(.*)$", line)
        if m and m.group(2).startswith("change-me"):
            values[m.group(1)] = secrets.token_hex(16)  # [A-Za-z0-9], as the example asks
            line = f"{m.group(1)}={values[m.group(1)]}"
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return values


class ComposeStack:
    """One project of the shipped compose file on ``engine``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.project = f"shxtest{os.getpid()}"
        self.env_file = engine.workdir / "compose.env"
        env = write_env_file(self.env_file)
        self.redis_password = env["REDIS_PASSWORD"]
        self.sentinel_password = env["SENTINEL_PASSWORD"]
        self.is_down = False
        self._ips: dict[str, str] = {}
        self._squatters: list[str] = []

    def compose(self, *args: str, timeout_s: float = 180,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.engine.compose(COMPOSE_FILE, self.project, self.env_file, *args,
                                   timeout_s=timeout_s, check=check)

    def up(self) -> None:
        # --no-build: the image was built by the test from the shipped Dockerfile with
        # `docker build --network host` (this daemon has no default bridge for a build to use;
        # compose 1.29 cannot be told otherwise without editing the compose file).
        self.compose("up", "-d", "--no-build", timeout_s=300)

    def down(self) -> subprocess.CompletedProcess[str]:
        if self._squatters:  # on the project's network: it could not be removed with them
            self.engine.docker("rm", "-f", "-v", *self._squatters, check=False)
            self._squatters.clear()
        res = self.compose("down", "-v", "--remove-orphans", timeout_s=300, check=False)
        self.is_down = res.returncode == 0
        return res

    def container(self, service: str) -> str:
        cid = self.compose("ps", "-q", service).stdout.strip()
        assert cid, f"no container for {service}"
        return cid

    def inspect(self, service: str, fmt: str) -> str:
        return self.engine.docker("inspect", "-f", fmt, self.container(service)).stdout.strip()

    def ip(self, service: str, fresh: bool = False) -> str:
        """The service's address on the compose network, asked once; ``fresh`` asks again (no
        address is fixed: a container started again may have another one)."""
        if fresh or service not in self._ips:
            ip = self.inspect(service, "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")
            assert re.fullmatch(r"[0-9.]+", ip), f"{service}: no IP ({ip!r})"
            self._ips[service] = ip
        return self._ips[service]

    def network(self, name: str) -> str:
        """The engine's name of the compose file's network ``name`` (compose 1.29's naming)."""
        return f"{self.project}_{name}"

    def squat(self, network: str) -> str:
        """Start an idle container (no service of the file) on ``network``, to hold an address;
        removed by :meth:`down`. Returns its ID."""
        cid = self.engine.docker("run", "-d", "--rm", "--network", network,
                                 "--entrypoint", "sleep", "redis:7.0", "600").stdout.strip()
        self._squatters.append(cid)
        return cid

    def health(self, service: str) -> str:
        return self.inspect(service, "{{if .State.Health}}{{.State.Health.Status}}{{end}}")

    def network_ids(self) -> list[str]:
        return self.engine.docker(
            "network", "ls", "-q", "--no-trunc", "--filter",
            f"label=com.docker.compose.project={self.project}").stdout.split()

    def exec(self, service: str, *cmd: str,
             timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        # -T: no TTY (the test has none; a user at a terminal leaves it out).
        return self.compose("exec", "-T", service, *cmd, timeout_s=timeout_s, check=False)

    def logs(self, tail: int = 60) -> str:
        res = self.compose("logs", "--no-color", "--tail", str(tail), check=False)
        return res.stdout + res.stderr

    # ------------------------------------------------------------------ as a client

    def redis_cli(self, port: int, *args: str) -> str:
        """`redis-cli -p PORT ARGS` on the host (password in REDISCLI_AUTH, not argv)."""
        exe = shutil.which("redis-cli")
        assert exe is not None, "redis-cli (Debian package redis-tools) is not installed"
        res = subprocess.run([exe, "-h", HOST, "-p", str(port), *args], capture_output=True,
                             text=True, timeout=15, check=False,
                             env={**os.environ, "REDISCLI_AUTH": self.redis_password})
        return (res.stdout + res.stderr).strip()

    def http_get(self, port: int, path: str = "/") -> tuple[int, str]:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=5) as r:
            return int(r.status), r.read().decode(errors="replace")

    def node(self, service: str) -> Any:
        """A client of one node on its bridge IP (the host is on the compose network's
        bridge, so no published port is needed)."""
        return redis.Redis(host=self.ip(service), port=6379, password=self.redis_password,
                           decode_responses=True, socket_timeout=2, socket_connect_timeout=2,
                           retry=Retry(NoBackoff(), 0))

    def sentinel(self, service: str) -> Any:
        return redis.Redis(host=self.ip(service), port=26379, password=self.sentinel_password,
                           decode_responses=True, socket_timeout=2, socket_connect_timeout=2,
                           retry=Retry(NoBackoff(), 0))
