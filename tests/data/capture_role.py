"""Regenerate tests/data/redis_role_replies.json from real redis-server processes.

Starts a master and a replica (foreground, by PID) on free loopback ports in a temporary
directory and records `ROLE` as the daemon's RedisNodes reads it (bare redis-py connection,
RESP2, decode_responses): the master's, the linked replica's (`connected`), and the replica's
once its master is stopped (`connect`/`connecting`).
Usage: .venv/bin/python tests/data/capture_role.py  (a second or two; stops what it starts)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis

from lab.localstack import free_port
from lab.procs import REDIS_SERVER, ManagedProcess
from lab.wait import wait_until

DATA = Path(__file__).resolve().parent


def role(port: int, host: str) -> Any:
    cls: Any = redis.Connection  # redis-py's connection class is untyped
    c = cls(host=host, port=port, protocol=2, decode_responses=True, socket_timeout=2)
    try:
        c.send_command("ROLE")
        return c.read_response()
    finally:
        c.disconnect()


def main() -> int:
    hosts = ("127.0.0.2", "127.0.0.3")
    port = free_port(list(hosts))
    procs: list[ManagedProcess] = []
    with tempfile.TemporaryDirectory(prefix="capture-role-") as tmp:
        try:
            for i, host in enumerate(hosts):
                d = Path(tmp) / f"n{i}"
                argv = [REDIS_SERVER, "--port", str(port), "--bind", host, "--save", "",
                        "--dir", str(d), "--protected-mode", "no"]
                if i:
                    argv += ["--replicaof", hosts[0], str(port)]
                p = ManagedProcess(f"n{i}", argv, d, d / "log")
                p.start()
                procs.append(p)

            def linked() -> bool:
                r = role(port, hosts[1])
                return isinstance(r, list) and r[3] == "connected"

            wait_until(linked, 10, "replica connected", not_yet=(redis.RedisError, OSError))
            doc: dict[str, Any] = {"master": role(port, hosts[0]),
                                   "replica_connected": role(port, hosts[1])}
            procs[0].stop()

            def unlinked() -> bool:
                return bool(role(port, hosts[1])[3] != "connected")

            wait_until(unlinked, 10, "replica link down", not_yet=(redis.RedisError, OSError))
            doc["replica_master_down"] = role(port, hosts[1])
            doc["nodes"] = {"master": f"{hosts[0]}:{port}", "replica": f"{hosts[1]}:{port}"}
            (DATA / "redis_role_replies.json").write_text(json.dumps(doc, indent=1) + "\n")
            print("wrote redis_role_replies.json")
        finally:
            for p in procs:
                p.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
