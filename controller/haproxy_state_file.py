"""HAProxy's server-state file, kept by the controller for one HAProxy.

A (re)started or reloaded HAProxy whose config has `server-state-file <path>` and
`load-server-state-from-file global` starts with the states this file holds, where from the
config alone it would route nothing (every server `disabled`) until the controller reaches it.
So reads flow through a reload or a restart at once, and go on flowing when HAProxy restarts
while the controller is away. Writes stay behind the write lease, which a new HAProxy does not
have until the controller gives it one, after it has synced every group (`haproxy_worker`).

Holds the last line HAProxy printed for each server (`show servers state`, kept by the parser
as `ServerState.line`) and writes them all, atomically (a temporary file renamed over the
old one), when a server's state changed. `fence` makes servers about to be taken out of
service written in maint until they are read again (the worker does so, and saves, before
their commands go out when the write lease is off): an HAProxy that starts in between gets less
routed, never a server being removed.
`FileOpens` tells when another process opens the file: an HAProxy starting (a restart, or a
master-worker reload, which nothing else shows until the new worker is asked) loads it ~15
ms before it answers on its socket (measured on 2.6).
Must not decide anything, nor talk to HAProxy's socket; it reads nothing back.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection
from pathlib import Path

from inotify_simple import INotify, flags

from controller.model import HAProxyState

# `show servers state`, format version 1 (HAProxy 2.6): the loader reads the version line and
# skips comment lines; the header is for people.
VERSION = "1"
HEADER = ("# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight "
          "srv_iweight srv_time_since_last_change srv_check_status srv_check_result "
          "srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id "
          "srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr "
          "srv_agent_addr srv_agent_port")
ADMIN_FIELD = 6  # srv_admin_state
FORCED_MAINT = 0x01  # SRV_ADMF_FMAINT: what `set server ... state maint` sets


class ServerStateFile:
    """The file at `path`, and the server lines it is written from. `record` and `fence` (the
    worker's thread) and `save` (a writer thread's, so that a slow disk never holds a sync
    back) may run in different threads."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()  # guards _servers, _fenced, _changed
        self._io = threading.Lock()  # one save at a time
        # (backend, server) -> (what routing depends on, HAProxy's line). Tuples of strings
        # and ints only: the garbage collector does not track them, however many servers.
        self._servers: dict[tuple[str, str], tuple[tuple[str, int, str, int, str], str]] = {}
        self._fenced: set[tuple[str, str]] = set()  # written in maint until read again
        self._changed = False
        self._written: str | None = None  # the text last written

    @property
    def changed(self) -> bool:
        """A server's state differs from what was last written."""
        return self._changed

    def record(self, state: HAProxyState) -> None:
        """Keep the servers of every backend `state` holds (a read of some backends leaves the
        others as they were); a server read again is no longer fenced (its commands ran)."""
        with self._lock:
            for backend, servers in state.backends.items():
                for name, srv in servers.items():
                    if not srv.line:
                        continue
                    key = (backend, name)
                    routing = (srv.addr, srv.port, srv.admin.value, srv.op_state, srv.fqdn)
                    old = self._servers.get(key)
                    # Not sessions, nor the line's clock: they always move.
                    if old is None or old[0] != routing or key in self._fenced:
                        self._changed = True
                    self._servers[key] = (routing, srv.line)
                    self._fenced.discard(key)

    def fence(self, servers: Collection[tuple[str, str]]) -> None:
        """These (backend, server) are being taken out: written in maint, whatever their last
        line says, until they are read again."""
        with self._lock:
            new = set(servers) - self._fenced
            if new:
                self._fenced |= new
                self._changed = True

    def save(self) -> bool:
        """Write the file (when the text differs from the last one written). True when
        written. Raises OSError when it cannot be (its directory is HAProxy's: never made
        here)."""
        with self._io:
            with self._lock:  # a copy, not the text: `record` (on the sync's path) waits less
                servers = list(self._servers.items())
                fenced = set(self._fenced)
                self._changed = False
            lines = [VERSION, HEADER]
            for key, (_, line) in servers:
                lines.append(_in_maint(line) if key in fenced else line)
            text = "\n".join(lines) + "\n"
            if text == self._written:
                return False
            # One writer at a time (`_io`): a fixed temporary name will do.
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.fchmod(fd, 0o644)  # whatever the umask: HAProxy, another user, must read it
                data = memoryview(text.encode())
                while data:
                    data = data[os.write(fd, data):]
            finally:
                os.close(fd)
            os.replace(tmp, self.path)  # atomic: a starting HAProxy reads the old or the new
            self._written = text
            return True


def _in_maint(line: str) -> str:
    fields = line.split()
    try:
        fields[ADMIN_FIELD] = str(int(fields[ADMIN_FIELD]) | FORCED_MAINT)
    except (IndexError, ValueError):  # not a state line: HAProxy's loader skips it, so do we
        return "# " + line
    return " ".join(fields)



class FileOpens:
    """Another process opened the state file (inotify on its directory; the controller itself
    only ever opens a temporary file beside it). Raises OSError when the directory cannot be
    watched."""

    def __init__(self, path: Path) -> None:
        self._name = path.name
        self._inotify = INotify()
        try:
            self._inotify.add_watch(str(path.parent), flags.OPEN)
        except OSError:
            self._inotify.close()
            raise

    def wait(self, timeout_s: float) -> bool:
        """Block up to `timeout_s`; True when the file was opened meanwhile."""
        events = self._inotify.read(timeout=max(0, int(timeout_s * 1000)))
        return any(e.name == self._name for e in events)

    def close(self) -> None:
        self._inotify.close()
