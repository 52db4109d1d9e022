"""controller.haproxy_state_file: the server-state file the controller keeps for HAProxy,
written from captured `show servers state` lines (tests/data); that a real HAProxy starts
from it is in tests/test_integration_state_file.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from captured import haproxy_state, haproxy_text

from controller.haproxy_state_file import FileOpens, ServerStateFile
from controller.model import AdminState, HAProxyState
from controller.settings import Settings, SettingsError, load

W, R = "redis1_master", "redis1_replicas"


def captured_lines(name: str) -> list[str]:
    """The server lines of a captured reply, as HAProxy printed them."""
    text = haproxy_text(name)
    start = text.index("\n# be_id")
    lines = text[start:].splitlines()[2:]
    return [ln.strip() for ln in lines[:lines.index("")]]


def with_admin(state: HAProxyState, backend: str, server: str,
               admin: AdminState) -> HAProxyState:
    servers = dict(state.backends[backend])
    servers[server] = dataclasses.replace(servers[server], admin=admin)
    return HAProxyState(state.info, {**state.backends, backend: servers})


def test_the_file_is_haproxys_own_lines_under_the_version_line(tmp_path: Path) -> None:
    """Saved after a read: format version 1, the header, then every server's line exactly
    as HAProxy printed it (what `show servers state > file` would give)."""
    f = ServerStateFile(str(tmp_path / "server-state"))
    f.record(haproxy_state("haproxy_localstack_steady.txt"))
    assert f.changed
    assert f.save()
    lines = (tmp_path / "server-state").read_text().splitlines()
    assert lines[0] == "1"
    assert lines[1].startswith("# be_id be_name srv_id srv_name")
    assert lines[2:] == captured_lines("haproxy_localstack_steady.txt")
    assert [p.name for p in tmp_path.iterdir()] == ["server-state"]  # no temporary left


def rows_of(path: Path) -> dict[tuple[str, str], list[str]]:
    return {(ln.split()[1], ln.split()[3]): ln.split()
            for ln in path.read_text().splitlines()[2:]}


def test_fenced_servers_are_written_in_maint_whatever_their_line_says(tmp_path: Path) -> None:
    """`fence`, before the commands that take servers out go: those servers' admin state gets
    the forced-maint bit (0x01) in every save until they are read again; the others are as
    read."""
    path = tmp_path / "server-state"
    f = ServerStateFile(str(path))
    steady = haproxy_state("haproxy_localstack_steady.txt")
    f.record(steady)
    f.fence({(W, "redis1a")})
    assert f.changed
    f.save()
    rows = rows_of(path)
    assert rows[(W, "redis1a")][6] == "5"  # was 4 (ready, config-disabled): now maint too
    assert rows[(W, "redis1b")][6] == "5"  # maint already: unchanged
    others = {k: v for k, v in rows.items() if k != (W, "redis1a")}
    by_line = {(ln.split()[1], ln.split()[3]): ln.split()
               for ln in captured_lines("haproxy_localstack_steady.txt")}
    assert others == {k: v for k, v in by_line.items() if k != (W, "redis1a")}
    f.record(HAProxyState(steady.info, {R: steady.backends[R]}))  # another backend read
    f.fence({(W, "redis1a")})
    f.save()
    assert rows_of(path)[(W, "redis1a")][6] == "5"  # still fenced
    f.record(HAProxyState(steady.info, {W: steady.backends[W]}))  # read after its commands
    assert f.changed  # the fence is gone: due again, though HAProxy's state is as before
    f.save()
    assert rows_of(path)[(W, "redis1a")][6] == "4"  # what HAProxy said


def test_a_read_that_changes_no_state_leaves_the_file_alone(tmp_path: Path) -> None:
    """Session counts and the line's clock move on every read; only an admin, operational
    or address change makes the file due again, and a backend read alone keeps the others."""
    f = ServerStateFile(str(tmp_path / "server-state"))
    steady = haproxy_state("haproxy_localstack_steady.txt")
    f.record(steady)
    f.save()
    busy = steady.backends[W]["redis1a"]
    f.record(HAProxyState(steady.info, {W: {**steady.backends[W],
                                            "redis1a": dataclasses.replace(busy, sessions=9)}}))
    assert not f.changed
    f.record(with_admin(HAProxyState(steady.info, {W: steady.backends[W]}), W, "redis1a",
                        AdminState.MAINT))
    assert f.changed
    f.save()
    text = (tmp_path / "server-state").read_text()
    assert len(text.splitlines()) == 2 + len(captured_lines("haproxy_localstack_steady.txt"))


def test_a_directory_that_is_not_there_is_an_error_not_created(tmp_path: Path) -> None:
    """The file's directory is HAProxy's (its socket's): saving into a missing one raises
    OSError and creates nothing."""
    f = ServerStateFile(str(tmp_path / "missing" / "server-state"))
    f.record(haproxy_state("haproxy_localstack_steady.txt"))
    with pytest.raises(OSError):
        f.save()
    assert not (tmp_path / "missing").exists()


def test_the_state_file_goes_beside_each_unix_socket_or_where_an_absolute_path_says() -> None:
    """A name goes beside each unix socket, nowhere for a `tcp:` socket; an absolute path is
    used as it is; "" keeps no file."""
    s = Settings()
    assert s.state_file_for("/var/run/haproxy/admin.sock") == "/var/run/haproxy/server-state"
    assert s.state_file_for("tcp:127.0.0.1:9999") is None
    assert Settings(haproxy_state_file="/srv/st").state_file_for("tcp:127.0.0.1:1") == "/srv/st"
    assert Settings(haproxy_state_file="").state_file_for("/run/a.sock") is None


def test_one_absolute_state_file_for_two_haproxies_is_refused() -> None:
    """Two HAProxy cannot share one state file: an absolute path with two sockets is a
    settings error that names the setting."""
    with pytest.raises(SettingsError, match="haproxy_state_file"):
        load({"haproxy_state_file": "/srv/state",
              "haproxy_sockets": ["/a/admin.sock", "/b/admin.sock"]}, {})
    with pytest.raises(SettingsError, match="haproxy_state_file"):
        load({"haproxy_state_file": "a b"}, {})


def test_another_process_opening_the_file_is_seen_the_controllers_own_writes_are_not(
    tmp_path: Path,
) -> None:
    """FileOpens: a reader opening the state file (a starting HAProxy loads it) is reported;
    the controller's own saves (a temporary file renamed over it) are not; with nothing
    happening, wait() returns False after its timeout."""
    path = tmp_path / "server-state"
    f = ServerStateFile(str(path))
    f.record(haproxy_state("haproxy_localstack_steady.txt"))
    f.save()
    opens = FileOpens(path)
    try:
        assert not opens.wait(0.05)
        f.record(haproxy_state("haproxy_localstack_switched.txt"))  # after a failover
        assert f.save()
        assert not opens.wait(0.05)
        assert path.read_text().startswith("1\n")  # what HAProxy does at its start
        assert opens.wait(1.0)
    finally:
        opens.close()


def test_a_directory_that_cannot_be_watched_is_an_oserror(tmp_path: Path) -> None:
    """FileOpens on a file whose directory is missing raises OSError (the worker then logs
    `server_state_file_unwatched` and relies on its probe)."""
    with pytest.raises(OSError):
        FileOpens(tmp_path / "missing" / "server-state")


def test_the_master_cli_goes_beside_each_unix_socket_or_where_a_path_says() -> None:
    """haproxy_master_socket: a name goes beside each unix admin socket, nowhere for a `tcp:`
    one; an absolute path or `tcp:` address is used as it is; "" means none."""
    s = Settings()
    assert s.master_socket_for("/var/run/haproxy/admin.sock") == "/var/run/haproxy/master.sock"
    assert s.master_socket_for("tcp:127.0.0.1:9999") is None
    one = Settings(haproxy_master_socket="/srv/m.sock")
    assert one.master_socket_for("tcp:127.0.0.1:1") == "/srv/m.sock"
    assert Settings(haproxy_master_socket="tcp:127.0.0.1:9").master_socket_for(
        "/run/a.sock") == "tcp:127.0.0.1:9"
    assert Settings(haproxy_master_socket="").master_socket_for("/run/a.sock") is None


def test_one_master_cli_for_two_haproxies_or_a_remote_one_is_refused() -> None:
    """Each HAProxy has its own master CLI: one path for two sockets is refused, as is a `tcp:`
    master CLI off loopback and a name with a space; each error names the setting."""
    with pytest.raises(SettingsError, match="haproxy_master_socket"):
        load({"haproxy_master_socket": "/srv/m.sock",
              "haproxy_sockets": ["/a/admin.sock", "/b/admin.sock"]}, {})
    with pytest.raises(SettingsError, match="haproxy_master_socket"):
        load({"haproxy_master_socket": "tcp:10.0.0.1:9999", "haproxy_sockets": ["/a/s"]}, {})
    with pytest.raises(SettingsError, match="haproxy_master_socket"):
        load({"haproxy_master_socket": "a b"}, {})
