"""Settings: one source of precedence, defaults < config file < environment < flags.

The file is TOML (keys as below); every key has an environment variable
`SENTINEL_HAPROXY_<KEY>` (lists comma-separated) and a command-line flag `--key-with-dashes`.
Secrets may come from `*_file` keys (a path whose content is the secret). Validation names
the setting and the source of the bad value. Must not log or print a secret.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from controller.model import Address
from controller.resolver import FAMILIES

ENV_PREFIX = "SENTINEL_HAPROXY_"


class SettingsError(ValueError):
    """A setting is missing or has a bad value; the message names it and where it came from."""


@dataclass(frozen=True)
class Settings:
    sentinels: tuple[str, ...] = ()
    haproxy_sockets: tuple[str, ...] = ()
    masters: tuple[str, ...] = ()  # empty: every master the Sentinels monitor
    write_backend: str = "{master}_master"
    read_backend: str = "{master}_replicas"
    sentinel_username: str = ""
    sentinel_password: str = field(default="", repr=False)
    sentinel_password_file: str = ""
    sentinel_tls: bool = False
    sentinel_tls_ca_file: str = ""
    sentinel_tls_cert_file: str = ""  # client certificate, for `tls-auth-clients yes`
    sentinel_tls_key_file: str = ""
    # Redis nodes themselves (only ROLE of the replica being promoted, for early_promotion).
    redis_username: str = ""
    redis_password: str = field(default="", repr=False)
    redis_password_file: str = ""
    redis_tls: bool = False
    redis_tls_ca_file: str = ""
    redis_tls_cert_file: str = ""
    redis_tls_key_file: str = ""
    early_promotion: bool = True  # writes follow the promoted replica at ROLE master
    promotion_poll_interval_s: float = 0.001  # ROLE of the replica being promoted, this often
    read_fallback_to_master: bool = True  # the master serves reads while no replica can
    write_lease: bool = True  # HAProxy takes new writes only while the controller vouches
    write_lease_ttl_s: float = 0.0  # 0: half the groups' shortest down-after, at least 1 s
    write_lease_map: str = "lease.map"  # the HAProxy map (file name or path) holding it
    # HAProxy's server-state file, kept after every change: a name beside each unix socket, or
    # one absolute path (one socket only); "" none. Its config loads it on (re)start.
    haproxy_state_file: str = "server-state"
    # HAProxy's master CLI (`haproxy -W -S PATH`): through it, sessions a reload's old worker
    # keeps to a fenced server are shut too. A name beside each unix socket, one absolute path
    # or `tcp:HOST:PORT` (one HAProxy only); "" none.
    haproxy_master_socket: str = "master.sock"
    max_replica_link_down_s: float = 60.0  # a serving replica may lag its master this long
    min_sentinels: int = 0  # 0: a majority of the group's Sentinels (as they report)
    resync_interval_s: float = 5.0
    haproxy_poll_interval_s: float = 0.5
    haproxy_timeout_s: float = 2.0
    sentinel_timeout_s: float = 1.0
    sentinel_ping_interval_s: float = 0.5
    sentinel_dead_after_s: float = 1.5
    log_format: str = "auto"  # auto: JSON unless stderr is a TTY
    log_level: str = "info"
    dry_run: bool = False
    allow_remote_haproxy: bool = False
    metrics_address: str = ""  # HOST:PORT for /metrics and /healthz; empty: off
    unhealthy_after_s: float = 30.0  # /healthz turns 503 when a problem lasts this long
    webhook_urls: tuple[str, ...] = ()
    webhook_timeout_s: float = 2.0
    # Topology: slots, names, re-checks (controller.slots, .resolver, .roster).
    slot_prefix: str = "slot"  # servers `<prefix><n>` / `<prefix>-fallback<n>` are slots
    resolve_family: str = "any"  # any (IPv4 first), ipv4-first, ipv6-first, ipv4, ipv6
    resolve_cache_s: float = 1.0  # a name's answer is reused this long
    resolve_timeout_s: float = 1.0  # longest a pass waits for name lookups
    resolve_interval_s: float = 1.0  # names in use are re-resolved this often between passes
    resolver_hosts_file: str = ""  # hosts-format file asked before DNS (pinned names, tests)
    replica_absent_grace_s: float = 20.0  # a serving replica no Sentinel lists (RESET) keeps
    recheck_interval_s: float = 0.1  # after +slave/+reset-master: passes this often...
    recheck_window_s: float = 2.0  # ...for this long
    # `sentinel-haproxy config` (controller.haproxy_config): the generated haproxy.cfg.
    slots_per_backend: int = 8  # server slots per backend (each node of a group needs one)
    fallback_slots: int = 2  # backup slots of each read backend (the read fallback)
    first_frontend_port: int = 5000  # group i (sorted by name): write +2i, read +2i+1
    stats_port: int = 9000  # 0: no stats page
    bind_address: str = ""  # frontends and stats bind this address ("": all)
    admin_socket: str = "/var/run/haproxy/admin.sock"  # stats socket line of the config
    group_ports: tuple[str, ...] = ()  # fixed ports: `group=WRITE:READ`, e.g. redis1=6000:6001
    group_slots: tuple[str, ...] = ()  # per-group slot count: `group=N`

    def fixed_ports(self) -> dict[str, tuple[int, int]]:
        """`group_ports` as group -> (write port, read port)."""
        out: dict[str, tuple[int, int]] = {}
        for item in self.group_ports:
            name, sep, ports = item.partition("=")
            w, sep2, r = ports.partition(":")
            if not (sep and sep2 and name.strip() and w.strip().isdigit() and r.strip().isdigit()):
                raise SettingsError(f"group_ports: {item!r} is not GROUP=WRITE_PORT:READ_PORT")
            out[name.strip()] = (int(w), int(r))
        return out

    def slots_for(self) -> dict[str, int]:
        """`group_slots` as group -> slot count."""
        out: dict[str, int] = {}
        for item in self.group_slots:
            name, sep, n = item.partition("=")
            if not (sep and name.strip() and n.strip().isdigit()):
                raise SettingsError(f"group_slots: {item!r} is not GROUP=COUNT")
            out[name.strip()] = int(n)
        return out

    def state_file_for(self, socket: str) -> str | None:
        """Where the server-state file of the HAProxy at admin `socket` goes; None: nowhere."""
        return _beside(self.haproxy_state_file, socket, tcp_ok=False)

    def master_socket_for(self, socket: str) -> str | None:
        """The master CLI of the HAProxy at admin `socket`; None: none."""
        return _beside(self.haproxy_master_socket, socket, tcp_ok=True)

    def password(self) -> str | None:
        """The Sentinel password, from the setting or its file."""
        return _secret(self.sentinel_password, self.sentinel_password_file,
                       "sentinel_password_file")

    def redis_secret(self) -> str | None:
        """The Redis nodes' password, from the setting or its file."""
        return _secret(self.redis_password, self.redis_password_file, "redis_password_file")


def _secret(value: str, path: str, key: str) -> str | None:
    if value:
        return value
    if path:
        try:
            return Path(path).read_text().strip() or None
        except OSError as e:
            raise SettingsError(f"{key}: cannot read {path!r}: {e.strerror}") from None
    return None


_FIELDS = {f.name: f for f in fields(Settings)}
SECRET_KEYS = frozenset({"sentinel_password", "redis_password"})


def _split(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(",") if p.strip())


def _coerce(key: str, value: Any, source: str) -> Any:
    """Turn a raw value (TOML value, env string, flag) into the field's type."""
    kind = type(getattr(Settings(), key))
    shown = "***" if key in SECRET_KEYS else repr(value)
    try:
        if kind is tuple:
            if isinstance(value, str):
                return _split(value)
            if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
                return tuple(v2 for v in value for v2 in _split(v))
            raise TypeError
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off", ""):
                return False
            raise TypeError
        if kind is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if not isinstance(value, str):
            raise TypeError
        return value
    except (TypeError, ValueError):
        raise SettingsError(
            f"{key} from {source}: {shown} is not a valid {kind.__name__}"
        ) from None


def load(
    flags: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Settings:
    """Merge defaults < file < env < flags. `flags` holds only flags the user gave."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = config_file or env.get(ENV_PREFIX + "CONFIG")
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as e:
            raise SettingsError(f"config file {path!r}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise SettingsError(f"config file {path!r}: not valid TOML: {e}") from None
        for key, value in data.items():
            k = key.replace("-", "_")
            if k not in _FIELDS:
                raise SettingsError(f"config file {path!r}: unknown setting {key!r}")
            values[k] = _coerce(k, value, f"config file {path}")
    for k in _FIELDS:
        name = ENV_PREFIX + k.upper()
        if name in env:
            values[k] = _coerce(k, env[name], f"environment {name}")
    for k, value in flags.items():
        if value is None:
            continue
        if k not in _FIELDS:
            raise SettingsError(f"unknown setting {k!r}")
        values[k] = _coerce(k, value, "--" + k.replace("_", "-"))
    settings = Settings(**values)
    validate(settings)
    return settings


def _beside(name: str, socket: str, tcp_ok: bool) -> str | None:
    """A file of each HAProxy named by a setting: a name goes beside each unix admin socket
    (none beside a `tcp:` one, which has no directory); an absolute path, or where `tcp_ok` a
    `tcp:` address, is taken as it is; "" is none."""
    if not name:
        return None
    if os.path.isabs(name) or (tcp_ok and name.startswith("tcp:")):
        return name
    if socket.startswith("tcp:"):
        return None
    return os.path.join(os.path.dirname(socket) or ".", name)


def _check_one_per_haproxy(s: Settings, key: str, what: str, tcp_ok: bool) -> None:
    """A setting `_beside` reads: no space or `;` (HAProxy's config and CLI split on them),
    and one path (or `tcp:` address) only when there is one HAProxy."""
    value = getattr(s, key)
    if any(c.isspace() or c == ";" for c in value):
        raise SettingsError(f"{key}: {value!r} is not a {what} name")
    one = os.path.isabs(value) or (tcp_ok and value.startswith("tcp:"))
    if one and len(s.haproxy_sockets) > 1:
        raise SettingsError(
            f"{key}: {value!r} is one {what} for {len(s.haproxy_sockets)} HAProxy; each "
            f"HAProxy needs its own {what}: give a name (it goes beside each admin socket)")


def validate(s: Settings) -> None:
    for key in ("resync_interval_s", "haproxy_poll_interval_s", "haproxy_timeout_s",
                "sentinel_timeout_s", "sentinel_ping_interval_s", "sentinel_dead_after_s",
                "webhook_timeout_s", "promotion_poll_interval_s", "max_replica_link_down_s",
                "unhealthy_after_s",
                "resolve_cache_s", "resolve_timeout_s", "resolve_interval_s",
                "replica_absent_grace_s", "recheck_interval_s", "recheck_window_s"):
        v = getattr(s, key)
        if not 0 < v <= 3600:
            raise SettingsError(f"{key}: {v} must be > 0 and <= 3600 seconds")
    if not 0 <= s.write_lease_ttl_s <= 3600:
        raise SettingsError(f"write_lease_ttl_s: {s.write_lease_ttl_s} must be 0 (auto) to 3600")
    if s.write_lease and 0 < s.write_lease_ttl_s <= s.sentinel_ping_interval_s:
        raise SettingsError(
            f"write_lease_ttl_s ({s.write_lease_ttl_s}) must be longer than "
            f"sentinel_ping_interval_s ({s.sentinel_ping_interval_s}): the lease is renewed on "
            "the Sentinels' pongs")
    if not s.write_lease_map or any(c.isspace() or c == ";" for c in s.write_lease_map):
        raise SettingsError(f"write_lease_map: {s.write_lease_map!r} is not a map file name")
    _check_one_per_haproxy(s, "haproxy_state_file", "file", tcp_ok=False)
    _check_one_per_haproxy(s, "haproxy_master_socket", "socket", tcp_ok=True)
    if s.sentinel_dead_after_s <= s.sentinel_ping_interval_s:
        raise SettingsError(
            "sentinel_dead_after_s must be longer than sentinel_ping_interval_s "
            f"({s.sentinel_dead_after_s} <= {s.sentinel_ping_interval_s})"
        )
    for key in ("write_backend", "read_backend"):
        tpl = getattr(s, key)
        try:
            out = tpl.format(master="x")
        except (KeyError, IndexError, ValueError):
            raise SettingsError(
                f"{key}: {tpl!r} is not a valid template (use {{master}} and nothing else)"
            ) from None
        if out == tpl.format(master="y"):
            raise SettingsError(f"{key}: {tpl!r} must contain {{master}}")
    if s.write_backend == s.read_backend:
        raise SettingsError("write_backend and read_backend must differ")
    for side in ("sentinel", "redis"):
        cert, key = getattr(s, f"{side}_tls_cert_file"), getattr(s, f"{side}_tls_key_file")
        if bool(cert) != bool(key):
            raise SettingsError(
                f"{side}_tls_cert_file and {side}_tls_key_file go together: give both or neither"
            )
        if cert and not getattr(s, f"{side}_tls"):
            raise SettingsError(f"{side}_tls_cert_file needs {side}_tls")
    if s.log_format not in ("auto", "json", "console"):
        raise SettingsError(f"log_format: {s.log_format!r} must be auto, json or console")
    if s.log_level not in ("debug", "info", "warning", "error"):
        raise SettingsError(f"log_level: {s.log_level!r} must be debug, info, warning or error")
    if not 0 <= s.min_sentinels <= 99:
        raise SettingsError(f"min_sentinels: {s.min_sentinels} must be between 0 (a majority "
                            "of the group's Sentinels) and 99")
    try:
        for x in s.sentinels:
            Address.parse(x, "sentinels:")
        if s.metrics_address:
            Address.parse(s.metrics_address, "metrics_address:", default_host="127.0.0.1")
    except ValueError as e:
        raise SettingsError(str(e)) from None
    sockets = [("haproxy_sockets", x) for x in s.haproxy_sockets]
    m = s.haproxy_master_socket
    sockets += [("haproxy_master_socket", m)] if m.startswith("tcp:") else []
    for key, sock in sockets:
        if not sock.startswith("tcp:"):
            continue
        try:
            host = Address.parse(sock[4:], f"{key}: tcp:").host
        except ValueError as e:
            raise SettingsError(str(e)) from None
        loopback = host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")
        if not loopback and not s.allow_remote_haproxy:
            raise SettingsError(
                f"{key}: {sock!r} is not on loopback; an admin socket must not "
                "cross a network (set allow_remote_haproxy to force)"
            )
    for name in s.masters:
        if not name or any(c.isspace() for c in name):
            raise SettingsError(f"masters: {name!r} is not a valid master name")
    _validate_topology(s)


def _validate_topology(s: Settings) -> None:
    if s.resolve_family not in FAMILIES:
        raise SettingsError(
            f"resolve_family: {s.resolve_family!r} must be one of {', '.join(FAMILIES)}"
        )
    if s.resolver_hosts_file and not Path(s.resolver_hosts_file).is_file():
        raise SettingsError(f"resolver_hosts_file: {s.resolver_hosts_file!r} is not a file")
    if not s.slot_prefix or not all(c.isalnum() or c in "_-." for c in s.slot_prefix):
        raise SettingsError(f"slot_prefix: {s.slot_prefix!r} must be letters, digits, _-.")
    if not 1 <= s.slots_per_backend <= 1000:
        raise SettingsError(f"slots_per_backend: {s.slots_per_backend} must be 1-1000")
    if not 0 <= s.fallback_slots <= 100:
        raise SettingsError(f"fallback_slots: {s.fallback_slots} must be 0-100")
    for key in ("first_frontend_port", "stats_port"):
        v = getattr(s, key)
        if not (0 if key == "stats_port" else 1) <= v <= 65535:
            raise SettingsError(f"{key}: {v} is not a port")
    for group, (w, r) in s.fixed_ports().items():
        if not (0 < w < 65536 and 0 < r < 65536) or w == r:
            raise SettingsError(f"group_ports: {group}={w}:{r}: two different ports 1-65535")
    for group, n in s.slots_for().items():
        if not 1 <= n <= 1000:
            raise SettingsError(f"group_slots: {group}={n}: 1-1000 slots")


def require_targets(s: Settings) -> None:
    """Commands that talk to both sides need at least one of each."""
    if not s.sentinels:
        raise SettingsError(
            "no sentinels: give --sentinel HOST:PORT (or SENTINEL_HAPROXY_SENTINELS)"
        )
    if not s.haproxy_sockets:
        raise SettingsError(
            "no haproxy socket: give --haproxy-socket PATH|tcp:HOST:PORT "
            "(or SENTINEL_HAPROXY_HAPROXY_SOCKETS)"
        )
