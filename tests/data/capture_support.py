"""What the HAProxy capture scripts share: one real haproxy on a config in a temp dir, a
Python listener standing in for a Redis node, and raw admin-socket exchanges. Stops what it
starts (by PID). Not a test module: imported by the capture_*.py scripts."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from controller.haproxy import HAProxyClient
from lab.procs import start_haproxy

STATE_BATCH = "show info; show servers state; show stat -1 4 -1"

#: How every capture config starts: the admin socket, TCP mode, the write frontend (fill in
#: `{sock}` and `{fe_write}`; the script adds its backends).
CONFIG_HEAD = """\
global
    stats socket {sock} mode 600 level admin

defaults
    mode tcp
    timeout client 30s
    timeout server 30s
    timeout connect 1s

frontend g_write
    bind 127.0.0.1:{fe_write}
    default_backend g_master
"""


def command(sock: Path, line: str) -> str:
    """One line on the admin socket, the raw reply (HAProxy's own client, 5 s deadline)."""
    return HAProxyClient(str(sock), timeout_s=5).exchange(line)


@dataclass
class Running:
    sock: Path
    listener: socket.socket  # the stand-in Redis node
    clients: list[socket.socket]  # client connections the script opened (closed at the end)


@contextmanager
def haproxy_with_listener(prefix: str, config: Callable[[Path], str],
                          listen: tuple[str, int], flags: tuple[str, ...] = ()
                          ) -> Iterator[Running]:
    """haproxy (with `flags`, e.g. `-W`) on `config(admin socket path)`, started and waited
    for; a listener on `listen`."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        sock = Path(tmp) / "admin.sock"
        cfg = Path(tmp) / "haproxy.cfg"
        cfg.write_text(config(sock))
        listener = socket.create_server(listen)
        run = Running(sock, listener, [])
        proc = None
        try:
            # waits until its admin socket answers
            proc = start_haproxy(cfg, sock, Path(tmp), flags)
            yield run
        finally:
            for c in run.clients:
                c.close()
            if proc is not None:
                proc.stop(grace_s=5)
            listener.close()
