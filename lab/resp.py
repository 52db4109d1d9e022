"""The one RESP2 client of the lab, its tests and benchmarks (stdlib only).

`RespConn` is one plain TCP connection: no pool, no reconnect, no retries, so what happens to
*this* connection is exactly what a probe or a test sees (writes through HAProxy, held
connections). `command()` is one command on a fresh connection. Bulk strings decode to `str`,
integers to `int`, arrays to `list`, nil to `None`; an error reply is a `RespError`.
Must not be used by the daemon (it talks to Redis and Sentinel through redis-py).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Sequence

from controller.model import Address


class RespError(Exception):
    """A Redis/Sentinel error reply (`-ERR ...`)."""


class ConnectionClosed(ConnectionError):
    """The peer closed the connection (EOF) or reset it before a full reply."""


def encode_command(*args: str | int) -> bytes:
    """One command as a RESP2 array of bulk strings."""
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def parse_reply(readline: Callable[[], bytes], read: Callable[[int], bytes]) -> object:
    """Read one RESP2 reply from a buffered stream.

    An error reply raises RespError; EOF before a full reply ConnectionClosed.
    """
    line = readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionClosed("connection closed in the middle of a reply")
    kind, rest = line[:1], line[1:-2].decode()
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RespError(rest)
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = read(n + 2)
        if len(data) != n + 2:
            raise ConnectionClosed("connection closed in the middle of a reply")
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [parse_reply(readline, read) for _ in range(n)]
    raise ConnectionError(f"unexpected RESP line {line!r}")


class RespConn:
    """A persistent RESP2 connection; any socket error or timeout leaves it unusable.

    With `password`, `AUTH` is the first command (its error reply raises RespError).
    """

    def __init__(self, addr: Address, timeout_s: float = 1.0, password: str | None = None) -> None:
        self.addr = addr
        self.sock = socket.create_connection((addr.host, addr.port), timeout=timeout_s)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.file = self.sock.makefile("rb")
            if password:
                self.command("AUTH", password)
        except BaseException:
            self.sock.close()
            raise

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RespConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, *args: str | int) -> None:
        try:
            self.sock.sendall(encode_command(*args))
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ConnectionClosed(f"send failed: {e!r}") from e

    def read(self) -> object:
        """One reply; EOF or a reset raises ConnectionClosed, an error reply RespError."""
        try:
            return parse_reply(self.file.readline, self.file.read)
        except ConnectionResetError as e:
            raise ConnectionClosed(f"reset: {e!r}") from e

    def pipeline(self, *commands: Sequence[str | int]) -> list[object]:
        """Send every command in one write, return every reply (error replies as RespError)."""
        try:
            self.sock.sendall(b"".join(encode_command(*c) for c in commands))
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ConnectionClosed(f"send failed: {e!r}") from e
        replies: list[object] = []
        for _ in commands:
            try:
                replies.append(self.read())
            except RespError as e:  # a top-level error reply: the stream is intact
                replies.append(e)
        return replies

    def command(self, *args: str | int) -> object:
        self.send(*args)
        return self.read()


def command(
    addr: Address, *args: str | int, timeout_s: float = 1.0, password: str | None = None
) -> object:
    """One command on a fresh connection (AUTH first with `password`)."""
    with RespConn(addr, timeout_s, password) as c:
        return c.command(*args)


def field_pairs(reply: object) -> dict[str, str]:
    """A flat field/value list (`SENTINEL MASTER`, one `SENTINEL REPLICAS` entry) as a dict."""
    if not isinstance(reply, list):
        raise RespError(f"expected a flat field/value list, got {reply!r:.80}")
    return {str(k): str(v) for k, v in zip(reply[::2], reply[1::2], strict=True)}


def info_fields(reply: object) -> dict[str, str]:
    """An `INFO` reply as a dict (section headers and blank lines skipped)."""
    out: dict[str, str] = {}
    for line in str(reply).splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            out[k] = v.strip()
    return out
