"""Regenerate tests/data/haproxy_slots_*.txt and haproxy_set_addr_replies.json from a real haproxy.

Starts one haproxy (foreground, by PID) on the config `sentinel-haproxy config` generates for one
group `redis1` (3 slots per backend, 2 backup slots; controller.haproxy_config, the daemon's own
generator) plus a backend `fq` with an `init-addr none` FQDN slot (the kind HAProxy 2.6 cannot
fill at runtime), then:

    haproxy_slots_initial.txt   reply of `show info; show servers state; show stat -1 4 -1` at
                                start: every slot at the placeholder 127.0.0.1:1, admin 5
    haproxy_set_addr_replies.json  each `set server B/S addr ...` case alone (command, raw
                                reply): IP and port changed, nothing to change, only the IP
                                changed, IPv4 -> IPv6, an invalid address, no such server, the
                                FQDN slot's refusal; and one `;` batch (`batch`, raw reply) of
                                state change, addr change, addr error, state change
    haproxy_slots_filled.txt    the state batch once the slots hold two nodes the way the
                                controller leaves them (redis1_master/slot1 = n1 ready, slot2 = n2
                                maint, slot3 = ::1 maint; redis1_replicas/slot1 = n2 ready with a
                                client session open on it, slot2 = n1 maint; slot-fallback1 =
                                n1 ready)

A Python listener on 127.0.0.3 stands in for n2's Redis so the read session can be established.
Usage: .venv/bin/python tests/data/capture_slots.py  (a second or two; stops what it starts)
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

from capture_support import STATE_BATCH, command, haproxy_with_listener

from controller.haproxy import HAProxyClient, HAProxyError
from controller.haproxy_config import Layout, render
from lab.localstack import free_port
from lab.wait import wait_until

DATA = Path(__file__).resolve().parent

FQDN_BACKEND = """
backend fq
    server-template fqdn 1-1 redis-gone.invalid:6379 init-addr none disabled
"""


def main() -> int:
    port = free_port(["127.0.0.2", "127.0.0.3"])
    first = free_port(["127.0.0.1"], count=2, exclude=frozenset({port}))

    def config(sock: Path) -> str:
        # No lease map in the temp dir: the write lease is not what these captures are about.
        layout = Layout(slots=3, fallback_slots=2, first_port=first, stats_port=0,
                        bind_address="127.0.0.1", admin_socket=str(sock), lease_map="")
        return render(["redis1"], layout) + FQDN_BACKEND

    with haproxy_with_listener("capture-slots-", config, ("127.0.0.3", port)) as run:
        sock = run.sock
        (DATA / "haproxy_slots_initial.txt").write_text(command(sock, STATE_BATCH))
        cases = [
            f"set server redis1_master/slot1 addr 127.0.0.2 port {port}",
            f"set server redis1_master/slot1 addr 127.0.0.2 port {port}",
            "set server redis1_master/slot2 addr 127.0.0.9 port 1",
            f"set server redis1_master/slot2 addr 127.0.0.3 port {port}",
            f"set server redis1_master/slot3 addr ::1 port {port}",
            "set server redis1_master/slot3 addr not-an-ip port 1",
            "set server redis1_master/nosuch addr 127.0.0.2 port 1",
            f"set server fq/fqdn1 addr 127.0.0.2 port {port}",
        ]
        replies = [{"command": c, "reply": command(sock, c)} for c in cases]
        batch = "; ".join([
            "set server redis1_master/slot1 state ready",
            f"set server redis1_replicas/slot1 addr 127.0.0.3 port {port}",
            "set server redis1_replicas/slot3 addr bad port 1",
            "set server redis1_replicas/slot1 state ready",
        ])
        doc = {"cases": replies, "batch": batch, "batch_reply": command(sock, batch)}
        (DATA / "haproxy_set_addr_replies.json").write_text(json.dumps(doc, indent=1) + "\n")
        setup = [
            f"set server redis1_replicas/slot2 addr 127.0.0.2 port {port}",
            f"set server redis1_replicas/slot-fallback1 addr 127.0.0.2 port {port}",
            "set server redis1_replicas/slot-fallback1 state ready",
        ]
        command(sock, "; ".join(setup))
        run.clients.append(socket.create_connection(("127.0.0.1", first + 1), timeout=5))
        server_side, _ = run.listener.accept()

        def has_session() -> bool:
            state = HAProxyClient(str(sock), 5).state()
            return state.backends["redis1_replicas"]["slot1"].sessions == 1

        wait_until(has_session, 10, "a session on redis1_replicas/slot1", 0.01,
                   not_yet=(HAProxyError,))
        (DATA / "haproxy_slots_filled.txt").write_text(command(sock, STATE_BATCH))
        server_side.close()
        print("wrote haproxy_slots_{initial,filled}.txt, haproxy_set_addr_replies.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
