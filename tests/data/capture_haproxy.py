"""Regenerate tests/data/haproxy_admin_bits_*.txt from a real haproxy (Debian's 2.6).

Starts one haproxy (foreground, by PID) on a small config in a temporary directory, with one
group `g` whose write backend `g_master` holds a server in each admin state the parser must read:

    n1 127.0.0.2  ready from the config, a client session open on it, then `state maint`: admin 1
                  with scur 1 (no on-marked-down shutdown-sessions, so the session survives)
    n2 127.0.0.3  config `disabled`, then `state ready`: admin 4 (CMAINT alone = ready)
    n3 127.0.0.4  ready from the config: admin 0
    n4 127.0.0.5  `state drain`: admin 8
    n5 127.0.0.6  config `disabled`, untouched: admin 5
    n6 unresolvable FQDN with `init-addr none`: srv_addr `-`, admin 32 (RMAINT)
    n7 localhost  an FQDN that resolves: srv_fqdn `localhost`, srv_addr 127.0.0.1, admin 0

and a read backend `g_replicas` (n1, n2). A Python listener on 127.0.0.2 stands in for n1's
Redis so the session can be established. Saved:

    haproxy_admin_bits_state.txt    reply of `show info; show servers state; show stat -1 4 -1`
    haproxy_admin_bits_stat_all.txt reply of `show stat` (frontend, backend and server rows)
    haproxy_admin_bits_batch.txt    reply of a 4-command `;` batch: ok, unknown server, unknown
                                    backend, ok
    haproxy_set_reply_with_error.txt  reply of a 2-command batch: ok, unknown server
    haproxy_admin_bits_targeted.txt   reply of the reader's batch for some backends only
                                    (`targeted_batch(["g_master", "g_replicas", "nosuch"])`:
                                    `show info`, then `show servers state B; show stat B 4 -1`
                                    per backend, an unknown one included)

Usage: .venv/bin/python tests/data/capture_haproxy.py [--only NAME,...]  (a second or two;
stops what it starts; NAME: state, stat_all, batch, set_reply, targeted)
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from capture_support import CONFIG_HEAD, STATE_BATCH, command, haproxy_with_listener

from controller.haproxy import HAProxyError
from controller.haproxy_parse import targeted_batch
from lab.localstack import free_port
from lab.wait import wait_until

DATA = Path(__file__).resolve().parent
POLL_S = 0.01

CONFIG = CONFIG_HEAD + """\

backend g_master
    balance first
    server n1 127.0.0.2:{port}
    server n2 127.0.0.3:{port} disabled
    server n3 127.0.0.4:{port}
    server n4 127.0.0.5:{port}
    server n5 127.0.0.6:{port} disabled
    server n6 redis-gone.invalid:{port} init-addr none
    server n7 localhost:{port}

backend g_replicas
    server n1 127.0.0.2:{port} disabled
    server n2 127.0.0.3:{port} disabled
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the captured HAProxy replies")
    parser.add_argument("--only", help="comma-separated names to write (default: all)")
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None

    def save(name: str, file: str, text: str) -> None:
        if only is None or name in only:
            (DATA / file).write_text(text)
            print(f"wrote {file}")

    port = free_port(["127.0.0.2"])
    fe_port = free_port(["127.0.0.1"], exclude=frozenset({port}))

    def config(sock: Path) -> str:
        return CONFIG.format(sock=sock, fe_write=fe_port, port=port)

    with haproxy_with_listener("capture-haproxy-", config, ("127.0.0.2", port)) as run:
        sock = run.sock
        run.clients.append(socket.create_connection(("127.0.0.1", fe_port), timeout=5))
        server_side, _ = run.listener.accept()  # haproxy connected n1 (balance first)

        def n1_has_session() -> bool:
            stat = command(sock, "show stat g_master 4 -1").splitlines()
            header = stat[0][2:].split(",")
            for row in stat[1:]:
                cols = row.split(",")
                if cols[:2] == ["g_master", "n1"]:
                    return cols[header.index("scur")] == "1"
            return False

        wait_until(n1_has_session, 10, "a session on g_master/n1", POLL_S,
                   not_yet=(HAProxyError,))
        setup = [
            "set server g_master/n1 state maint",
            "set server g_master/n2 state ready",
            "set server g_master/n4 state drain",
        ]
        reply = command(sock, "; ".join(setup))
        if reply != "\n" * len(setup):
            raise RuntimeError(f"setup refused: {reply!r}")
        save("state", "haproxy_admin_bits_state.txt", command(sock, STATE_BATCH))
        save("stat_all", "haproxy_admin_bits_stat_all.txt", command(sock, "show stat"))
        targeted = targeted_batch(["g_master", "g_replicas", "nosuch"])
        save("targeted", "haproxy_admin_bits_targeted.txt", command(sock, targeted))
        batch = "; ".join([
            "set server g_master/n3 state ready",
            "set server g_master/nosuch state maint",
            "set server nosuch/n1 state maint",
            "shutdown sessions server g_master/n3",
        ])
        save("batch", "haproxy_admin_bits_batch.txt", command(sock, batch))
        pair = "set server g_replicas/n1 state maint; set server g_replicas/nosuch state maint"
        save("set_reply", "haproxy_set_reply_with_error.txt", command(sock, pair))
        server_side.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
