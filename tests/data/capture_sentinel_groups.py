"""Regenerate tests/data/sentinel_groups.json: the replies to the reader's two pipelines.

The reader asks each Sentinel `HEAD_COMMANDS` (`INFO sentinel`, `SENTINEL MYID`) when a full
pass starts and `group_commands(names, discover)` (`SENTINEL MASTER g`, `GET-MASTER-ADDR-BY-NAME
g`, `REPLICAS g` and, when discovering, `SENTINELS g`) for the groups it reads. This runs a
LocalStack with two groups (redis1, redis2), waits until every Sentinel sees both masters with
a linked replica, and saves, per Sentinel, the raw RESP2 replies exactly as the reader reads them
(a bare `redis.Connection`, decode_responses=True, one pipeline): the head, the groups pipeline
for `redis1, nosuch, redis2` with discovery (a refused command saved as `{"error": text}`).

Usage: .venv/bin/python tests/data/capture_sentinel_groups.py  (~20 s; stops what it starts)
"""

from __future__ import annotations

import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from controller.sentinel_parse import HEAD_COMMANDS, group_commands
from lab.localstack import Layout, LocalStack
from lab.wait import wait_until

DATA = Path(__file__).resolve().parent
GROUPS = ("redis1", "redis2")
ASKED = ["redis1", "nosuch", "redis2"]


def pipeline(conn: Any, cmds: list[tuple[str, ...]]) -> list[Any]:
    conn.send_packed_command(conn.pack_commands(cmds), check_health=False)
    out: list[Any] = []
    for _ in cmds:
        try:
            out.append(conn.read_response())
        except redis.ResponseError as e:
            out.append({"error": str(e)})
    return out


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="capture-groups-") as tmp, LocalStack(
        Path(tmp), Layout.for_tests(groups=GROUPS)
    ) as stack:
        connection: Any = redis.Connection  # redis-py's own types are partial
        conns = {str(a): connection(host=a.host, port=a.port, protocol=2,
                                    decode_responses=True, socket_timeout=2)
                 for a in stack.sentinel_addrs}

        def settled() -> bool:
            for c in conns.values():
                for g in GROUPS:
                    reps = pipeline(c, [("SENTINEL", "REPLICAS", g)])[0]
                    if not reps or not any("master-link-status" in r and
                                           r[r.index("master-link-status") + 1] == "ok"
                                           for r in reps):
                        return False
            return True

        wait_until(settled, 60, "every sentinel to see both groups with a linked replica", 0.1)
        out: dict[str, Any] = {}
        for name, c in conns.items():
            out[name] = {"head": pipeline(c, HEAD_COMMANDS),
                         "groups": pipeline(c, group_commands(ASKED, discover=True))}
            c.disconnect()
        nodes = {n.name: f"{n.host}:{n.port}" for n in stack.nodes.values()}
        doc = {
            "captured": {"at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                         "redis_py": redis.__version__,
                         "how": "tests/data/capture_sentinel_groups.py"},
            "note": "Two groups, every node up, epoch 0. Per sentinel: replies to HEAD_COMMANDS "
                    f"and to group_commands({ASKED}, discover=True); a refused command is "
                    "{'error': text}.",
            "groups": list(GROUPS), "asked": ASKED, "nodes": nodes,
            "sentinels": list(conns), "resp2": out,
        }
        (DATA / "sentinel_groups.json").write_text(json.dumps(doc, indent=1) + "\n")
        print("wrote sentinel_groups.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
