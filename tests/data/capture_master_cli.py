"""Regenerate tests/data/haproxy_master_cli.json from a real haproxy (Debian's 2.6) in
master-worker mode with a master CLI (`haproxy -W -S master.sock`).

One frontend `g_write` -> backend `g_master` (n1, a Python listener on 127.0.0.2 standing in
for Redis; n2 disabled) and `g_read` -> `g_replicas` (n1). Two client sessions through
`g_write` and one through `g_read` are opened, then the master reloads (`reload` on its CLI):
the old worker keeps the three sessions. Saved, raw replies of the master CLI:

    show_proc            `show proc` (master, new worker, old worker)
    old_pid              the old worker's PID
    show_sess            `@!OLD show sess` (the three streams, and the CLI's own)
    shutdown_server      `@!OLD shutdown sessions server g_master/n1` (refused there)
    shutdown_session     `@!OLD shutdown session ID; @!OLD shutdown session 0x1` for one of
                         the g_master streams, then an id that does not exist
    unprefixed           `@!OLD show sess; shutdown session ID`: the prefix reaches only to
                         the `;`, the second command went to the master (which lacks it)
    g_master_ids         the ids of the two g_master streams (as the test expects them)

Usage: .venv/bin/python tests/data/capture_master_cli.py  (a second or two; stops what it
starts, by PID)
"""

from __future__ import annotations

import json
import re
import socket
import tempfile
from pathlib import Path

from capture_support import CONFIG_HEAD, haproxy_with_listener

from controller.haproxy import HAProxyClient, HAProxyError
from lab.localstack import free_port
from lab.wait import wait_until

DATA = Path(__file__).resolve().parent

CONFIG = CONFIG_HEAD + """\

frontend g_read
    bind 127.0.0.1:{fe_read}
    default_backend g_replicas

backend g_master
    server n1 127.0.0.2:{port}
    server n2 127.0.0.3:{port} disabled

backend g_replicas
    server n1 127.0.0.2:{port}
"""


def master(path: Path, line: str) -> str:
    """One line on the master CLI, then `quit` (it keeps its session open otherwise). The
    master re-executes itself after forking a worker (at its start and at each reload) and
    refuses connections meanwhile: asked again until it answers, up to 5 s."""
    client = HAProxyClient(str(path), timeout_s=5)
    replies = wait_until(lambda: [client.exchange(f"{line}\nquit")], 5, f"master CLI: {line}",
                         not_yet=(HAProxyError,))  # a list: an empty reply is an answer too
    return replies[0]


def main() -> int:
    port = free_port(["127.0.0.2"])
    fe_write = free_port(["127.0.0.1"], exclude=frozenset({port}))
    fe_read = free_port(["127.0.0.1"], exclude=frozenset({port, fe_write}))

    def config(sock: Path) -> str:
        return CONFIG.format(sock=sock, port=port, fe_write=fe_write, fe_read=fe_read)

    with tempfile.TemporaryDirectory(prefix="capture-master-cli-") as tmp:
        msock = Path(tmp) / "master.sock"  # outside haproxy's own temp dir: made before it
        with haproxy_with_listener("capture-master-cli-", config, ("127.0.0.2", port),
                                   ("-W", "-S", str(msock))) as run:
            for fe in (fe_write, fe_write, fe_read):
                run.clients.append(socket.create_connection(("127.0.0.1", fe), timeout=5))
                run.clients.append(run.listener.accept()[0])
            old = HAProxyClient(str(run.sock), 5).info().pid
            master(msock, "reload")

            def new_worker() -> bool:
                try:
                    return HAProxyClient(str(run.sock), 1).info().pid != old
                except HAProxyError:
                    return False

            wait_until(new_worker, 10, "a new worker after the reload")
            show_sess = master(msock, f"@!{old} show sess")
            ids = re.findall(r"^(0x[0-9a-f]+): .* be=g_master srv=n1 ", show_sess, re.M)
            if len(ids) != 2:
                raise RuntimeError(f"expected 2 g_master streams on the old worker:\n{show_sess}")
            doc = {
                "note": "haproxy 2.6.12 -W -S master.sock; two sessions through g_write "
                        "(g_master/n1) and one through g_read (g_replicas/n1) opened before "
                        "a reload; replies of the master CLI",
                "show_proc": master(msock, "show proc"),
                "old_pid": old,
                "show_sess": show_sess,
                "shutdown_server": master(msock, f"@!{old} shutdown sessions server g_master/n1"),
                "shutdown_session": master(
                    msock, f"@!{old} shutdown session {ids[0]}; @!{old} shutdown session 0x1"),
                "unprefixed": master(msock, f"@!{old} show sess; shutdown session {ids[1]}"),
                "g_master_ids": ids,
            }
    (DATA / "haproxy_master_cli.json").write_text(json.dumps(doc, indent=1) + "\n")
    print("wrote haproxy_master_cli.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
