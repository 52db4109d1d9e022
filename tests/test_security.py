"""Security rules that need no process: the HAProxy admin socket stays on loopback unless forced,
and secrets (from env or a file) never reach a log line, a repr or an error message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from controller import logs
from controller.sentinel import Auth
from controller.settings import Settings, SettingsError, load

SECRET = "s3cr3t-b81f0a"


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """logs.setup() binds the (captured) stderr of the test: restore the global config after."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.mark.parametrize("sock", ["tcp:127.0.0.1:9999", "tcp:127.0.0.5:9999", "tcp:[::1]:9999",
                                  "tcp:localhost:9999", "/var/run/haproxy/admin.sock"])
def test_loopback_or_unix_haproxy_socket_is_accepted(sock: str) -> None:
    """A unix socket or a TCP socket on a loopback address is accepted without forcing."""
    s = load({"haproxy_sockets": [sock]}, env={})
    assert s.haproxy_sockets == (sock,)


@pytest.mark.parametrize("sock", ["tcp:10.1.2.3:9999", "tcp:haproxy:9999", "tcp:0.0.0.0:9999",
                                  "tcp:[2001:db8::1]:9999"])
def test_remote_haproxy_socket_is_refused_unless_forced(sock: str) -> None:
    """A TCP admin socket off loopback is refused, naming the setting, unless
    allow_remote_haproxy is set (flag or env)."""
    with pytest.raises(SettingsError, match=r"haproxy_sockets.*not on loopback.*allow_remote"):
        load({"haproxy_sockets": [sock]}, env={})
    with pytest.raises(SettingsError, match="not on loopback"):
        load({}, env={"SENTINEL_HAPROXY_HAPROXY_SOCKETS": sock})
    forced = load({"haproxy_sockets": [sock], "allow_remote_haproxy": True}, env={})
    assert forced.haproxy_sockets == (sock,)
    forced_env = load({}, env={"SENTINEL_HAPROXY_HAPROXY_SOCKETS": sock,
                               "SENTINEL_HAPROXY_ALLOW_REMOTE_HAPROXY": "true"})
    assert forced_env.allow_remote_haproxy


def test_password_from_env_or_file_is_used_and_hidden_from_repr(tmp_path: Path) -> None:
    """The password comes from env or a file (stripped) and repr(Settings/Auth) never shows it."""
    s = load({}, env={"SENTINEL_HAPROXY_SENTINEL_PASSWORD": SECRET})
    assert s.password() == SECRET
    f = tmp_path / "pw"
    f.write_text(SECRET + "\n")
    s2 = load({}, env={"SENTINEL_HAPROXY_SENTINEL_PASSWORD_FILE": str(f)})
    assert s2.password() == SECRET
    for text in (repr(s), str(s), repr(s2),
                 repr(Auth("u", SECRET)), str(Auth(None, SECRET))):
        assert SECRET not in text, text


def test_unreadable_password_file_names_the_file_not_a_secret(tmp_path: Path) -> None:
    """A missing password file is a SettingsError naming the setting and the path."""
    s = load({"sentinel_password_file": str(tmp_path / "missing")}, env={})
    with pytest.raises(SettingsError, match=r"sentinel_password_file.*missing"):
        s.password()


def test_settings_errors_never_echo_the_password() -> None:
    """A bad setting next to a password: the error names the bad setting, not the secret."""
    with pytest.raises(SettingsError) as e:
        load({"sentinel_password": SECRET, "resync_interval_s": "soon"}, env={})
    assert "resync_interval_s" in str(e.value) and SECRET not in str(e.value)


def test_json_log_masks_secret_fields(capsys: pytest.CaptureFixture[str]) -> None:
    """Any log field named like a secret is written as *** (second line of defence)."""
    logs.setup("json", "info")
    log = structlog.get_logger("test")
    log.info("probe", sentinel_password=SECRET, password=SECRET, api_token=SECRET,
             webhook_secret=SECRET, sentinel="127.0.0.1:26379")
    err = capsys.readouterr().err
    assert SECRET not in err
    line = json.loads(err.strip().splitlines()[-1])
    assert line["sentinel_password"] == line["password"] == line["api_token"] == "***"
    assert line["sentinel"] == "127.0.0.1:26379"


def test_console_log_masks_secret_fields(capsys: pytest.CaptureFixture[str]) -> None:
    """The console renderer masks secrets too."""
    logs.setup("console", "info")
    structlog.get_logger("test").warning("probe", sentinel_password=SECRET)
    assert SECRET not in capsys.readouterr().err


def test_default_settings_repr_has_no_secret_fields_set() -> None:
    """Settings' password field is excluded from repr entirely."""
    assert "sentinel_password=" not in repr(Settings(sentinel_password=SECRET))
