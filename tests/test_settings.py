"""controller.settings: precedence, coercion and validation (no process, no real environment)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from controller.settings import Settings, SettingsError, load

SECRET = "pw-7d1c9e4a"


def toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "controller.toml"
    path.write_text(text)
    return str(path)


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    """Each setting comes from the highest layer that gives it: flags > env > file > defaults."""
    cfg = toml(tmp_path, """
sentinels = ["10.0.0.1:26379"]
log_level = "debug"
resync_interval_s = 2
haproxy_timeout_s = 3.5
""")
    env = {
        "SENTINEL_HAPROXY_SENTINELS": "10.0.0.2:26379",
        "SENTINEL_HAPROXY_LOG_LEVEL": "warning",
        "SENTINEL_HAPROXY_HAPROXY_TIMEOUT_S": "4",
    }
    s = load({"sentinels": ["10.0.0.3:26379"], "haproxy_timeout_s": None}, env, cfg)
    assert s.sentinels == ("10.0.0.3:26379",)  # flag over env over file
    assert s.log_level == "warning"  # env over file
    assert s.haproxy_timeout_s == 4.0  # env over file; a flag left as None does not count
    assert s.resync_interval_s == 2.0  # file over default
    assert s.write_backend == Settings().write_backend  # default


def test_config_file_from_environment(tmp_path: Path) -> None:
    """SENTINEL_HAPROXY_CONFIG names the file when no path is given."""
    cfg = toml(tmp_path, 'masters = ["redis1"]\n')
    assert load({}, {"SENTINEL_HAPROXY_CONFIG": cfg}).masters == ("redis1",)


def test_dashed_keys_in_file(tmp_path: Path) -> None:
    """File keys may use dashes like the flags do."""
    cfg = toml(tmp_path, 'write-backend = "be_{master}_w"\n')
    assert load({}, {}, cfg).write_backend == "be_{master}_w"


def test_list_splitting(tmp_path: Path) -> None:
    """Lists split on commas and drop blanks, from env strings and from TOML lists alike."""
    env = {"SENTINEL_HAPROXY_SENTINELS": " a:1, b:2,,c:3 ,"}
    assert load({}, env).sentinels == ("a:1", "b:2", "c:3")
    cfg = toml(tmp_path, 'haproxy_sockets = ["/run/a.sock,/run/b.sock", " /run/c.sock "]\n')
    assert load({}, {}, cfg).haproxy_sockets == ("/run/a.sock", "/run/b.sock", "/run/c.sock")
    assert load({"masters": "m1,m2"}, {}).masters == ("m1", "m2")


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("yes", True), ("ON", True), ("0", False), ("", False)]
)
def test_boolean_words_from_environment(value: str, expected: bool) -> None:
    """Environment booleans accept the usual words."""
    assert load({}, {"SENTINEL_HAPROXY_DRY_RUN": value}).dry_run is expected


def test_bad_env_value_names_setting_and_variable() -> None:
    """A bad environment value names the setting, the variable and the value."""
    with pytest.raises(SettingsError) as e:
        load({}, {"SENTINEL_HAPROXY_RESYNC_INTERVAL_S": "fast"})
    msg = str(e.value)
    assert "resync_interval_s" in msg
    assert "environment SENTINEL_HAPROXY_RESYNC_INTERVAL_S" in msg
    assert "'fast' is not a valid float" in msg


def test_bad_file_value_names_setting_and_file(tmp_path: Path) -> None:
    """A bad value in the file names the setting and the file."""
    cfg = toml(tmp_path, 'min_sentinels = 1.5\n')
    pattern = rf"min_sentinels from config file {re.escape(cfg)}: 1\.5 is not"
    with pytest.raises(SettingsError, match=pattern):
        load({}, {}, cfg)
    cfg = toml(tmp_path, 'sentinels = [1, 2]\n')
    with pytest.raises(SettingsError, match="sentinels from config file"):
        load({}, {}, cfg)


@pytest.mark.parametrize(
    ("flags", "pattern"),
    [
        ({"dry_run": "maybe"}, r"dry_run from --dry-run: 'maybe' is not a valid bool"),
        ({"min_sentinels": True}, r"min_sentinels from --min-sentinels"),
        ({"resync_interval_s": 0}, r"resync_interval_s: 0.0 must be > 0"),
        ({"log_level": "loud"}, r"log_level: 'loud' must be"),
        ({"log_format": "xml"}, r"log_format: 'xml' must be"),
        ({"sentinels": ["a:1"], "min_sentinels": -1}, r"min_sentinels: -1 must be between 0"),
        ({"masters": ["bad name"]}, r"masters: 'bad name' is not a valid master name"),
        ({"sentinel_ping_interval_s": 2.0}, r"sentinel_dead_after_s must be longer"),
        ({"nosuch": 1}, r"unknown setting 'nosuch'"),
    ],
)
def test_bad_flag_values_name_the_setting(flags: dict[str, object], pattern: str) -> None:
    """Bad flag values and inconsistent combinations are refused, naming the setting."""
    with pytest.raises(SettingsError, match=pattern):
        load(flags, {})


def test_unknown_file_key_is_refused(tmp_path: Path) -> None:
    """A typo in the file is an error naming the key and the file, not silently ignored."""
    cfg = toml(tmp_path, 'resync_intervall_s = 2\n')
    with pytest.raises(SettingsError, match=rf"config file '{re.escape(cfg)}': unknown setting "
                                            r"'resync_intervall_s'"):
        load({}, {}, cfg)


def test_missing_or_invalid_file(tmp_path: Path) -> None:
    """A missing or non-TOML file is an error naming the file."""
    with pytest.raises(SettingsError, match=r"config file .*nosuch\.toml"):
        load({}, {}, str(tmp_path / "nosuch.toml"))
    with pytest.raises(SettingsError, match="not valid TOML"):
        load({}, {}, toml(tmp_path, "sentinels = [\n"))


@pytest.mark.parametrize(
    ("write", "read", "pattern"),
    [
        ("static_backend", "{master}_replicas", r"write_backend: 'static_backend' must contain"),
        ("{master}_master", "{nope}", r"read_backend: '\{nope\}' is not a valid template"),
        ("{0}_master", "{master}_replicas", r"write_backend: .* is not a valid template"),
        ("{master!z}", "{master}_replicas", r"write_backend: .* is not a valid template"),
        ("{master}", "{master}", r"write_backend and read_backend must differ"),
    ],
)
def test_backend_templates_are_validated(write: str, read: str, pattern: str) -> None:
    """Backend names must be templates using {master} only, and differ."""
    with pytest.raises(SettingsError, match=pattern):
        load({"write_backend": write, "read_backend": read}, {})


def test_valid_templates_accepted() -> None:
    """Any text around {master} is a valid template."""
    s = load({"write_backend": "be-{master}-rw", "read_backend": "be-{master}-ro"}, {})
    assert s.write_backend.format(master="redis1") == "be-redis1-rw"


def test_remote_tcp_socket_refused_unless_allowed(tmp_path: Path) -> None:
    """A TCP admin socket off loopback is refused from any layer unless explicitly allowed."""
    cfg = toml(tmp_path, 'haproxy_sockets = ["tcp:192.0.2.10:9999"]\n')
    with pytest.raises(SettingsError, match="not on loopback"):
        load({}, {}, cfg)
    assert load({"allow_remote_haproxy": True}, {}, cfg).haproxy_sockets == (
        "tcp:192.0.2.10:9999",
    )
    assert load({"haproxy_sockets": ["tcp:127.0.0.1:9999"]}, {}).haproxy_sockets


def test_secret_never_in_repr_or_error_messages(tmp_path: Path) -> None:
    """The password stays out of repr and of every error, even when it is the bad value."""
    s = load({}, {}, toml(tmp_path, f'sentinel_password = "{SECRET}"\n'))
    assert s.password() == SECRET
    assert SECRET not in repr(s) and SECRET not in str(s)
    cfg = toml(tmp_path, "sentinel_password = 424242\n")  # a number: refused, value hidden
    with pytest.raises(SettingsError) as e:
        load({}, {}, cfg)
    assert "sentinel_password" in str(e.value) and "424242" not in str(e.value)
    cfg = toml(tmp_path, f'sentinel_password = "{SECRET}"\nresync_interval_s = -1\n')
    with pytest.raises(SettingsError) as e:
        load({}, {"SENTINEL_HAPROXY_SENTINEL_PASSWORD": SECRET}, cfg)
    assert SECRET not in str(e.value)


def test_every_setting_has_a_flag_on_run(capsys: pytest.CaptureFixture[str]) -> None:
    """Each Settings field can be given as `--key-with-dashes` to `run` (one source of names;
    list settings take the singular flag, e.g. `--sentinel`)."""
    from dataclasses import fields

    from controller.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    shown = capsys.readouterr().out
    singular = {"sentinels": "sentinel", "haproxy_sockets": "haproxy_socket",
                "masters": "master", "webhook_urls": "webhook_url"}
    missing = [f.name for f in fields(Settings)
               if f"--{singular.get(f.name, f.name).replace('_', '-')}" not in shown]
    assert missing == []
