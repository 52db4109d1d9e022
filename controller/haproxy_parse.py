"""Parse HAProxy Runtime API output (`show info`, `show servers state`, `show stat`; the
master CLI's `show proc` and `show sess`), and build the batches that read it.

Columns are found by header name, never by position (facts A.1.2). Every function raises
`HAProxyReplyError` naming the problem on output it does not understand. No I/O here.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Collection, Sequence
from dataclasses import replace

from controller.model import HAProxyInfo, HAProxyState, ServerState, admin_from_bits

#: One exchange reads identity, admin states and session counts: `parse_state_batch` reads it.
STATE_BATCH = "show info; show servers state; show stat -1 4 -1"

# What HAProxy 2.6 answers for a backend it does not have (facts A.1.3).
_NO_BACKEND = ("Can't find backend.", "No such proxy.")


def sendable(backend: str) -> bool:
    """Whether a backend name can be sent in a batch (HAProxy's own config accepts none
    with a blank or `;`: such a backend cannot exist)."""
    return bool(backend) and not any(c.isspace() or c == ";" for c in backend)


def targeted_batch(backends: list[str]) -> str:
    """One exchange reading identity and some backends only (`parse_targeted_batch` reads it):
    `show info`, then `show servers state B; show stat B 4 -1` per backend."""
    parts = ["show info"]
    for b in backends:
        if not sendable(b):
            raise HAProxyReplyError(f"backend name {b!r} cannot be sent in a batch")
        parts += [f"show servers state {b}", f"show stat {b} 4 -1"]
    return "; ".join(parts)


class HAProxyReplyError(ValueError):
    """Runtime API output that does not have the expected shape."""


# `show info` is ~60 `Name: value` lines and every read of a sync starts with it (restart
# detection); only three fields are used: find those, the last of each as a dict would keep.
_INFO_FIELD = re.compile(r"^[ \t]*(Pid|Start_time_sec|Stopping)[ \t]*:(.*)$", re.M)


def parse_info(text: str) -> HAProxyInfo:
    """`show info`: `Name: value` lines (only Pid, Start_time_sec and Stopping are read)."""
    fields = {k: v.strip() for k, v in _INFO_FIELD.findall(text)}
    try:
        return HAProxyInfo(
            pid=int(fields["Pid"]),
            start_time_s=int(fields.get("Start_time_sec", "0")),
            stopping=fields.get("Stopping", "0") not in ("0", ""),
        )
    except KeyError:
        raise HAProxyReplyError(f"show info: no Pid field in {text[:120]!r}") from None
    except ValueError as e:
        raise HAProxyReplyError(f"show info: bad number ({e})") from None


def parse_servers_state(text: str) -> dict[str, dict[str, ServerState]]:
    """`show servers state` (format version 1) -> backend -> server -> state, sessions 0."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise HAProxyReplyError("show servers state: empty output")
    if lines[0].strip() != "1":
        raise HAProxyReplyError(
            f"show servers state: unsupported format version {lines[0][:40]!r} (want 1)"
        )
    header: list[str] | None = None
    out: dict[str, dict[str, ServerState]] = {}
    for line in lines[1:]:
        if line.startswith("#"):
            header = line[1:].split()
            continue
        if header is None:
            raise HAProxyReplyError("show servers state: data before the header line")
        row = dict(zip(header, line.split(), strict=False))
        try:
            srv = ServerState(
                backend=row["be_name"],
                name=row["srv_name"],
                addr=row["srv_addr"],
                port=int(row["srv_port"]) if row.get("srv_port", "-") != "-" else 0,
                admin=admin_from_bits(int(row["srv_admin_state"])),
                op_state=int(row["srv_op_state"]),
                fqdn=row.get("srv_fqdn", "-"),
                line=line.strip(),
            )
        except (KeyError, ValueError) as e:
            raise HAProxyReplyError(f"show servers state: bad line {line[:120]!r} ({e})") from None
        out.setdefault(srv.backend, {})[srv.name] = srv
    return out


def parse_stat(text: str) -> dict[tuple[str, str], tuple[int, bool]]:
    """`show stat` CSV -> (backend, server) -> (current sessions `scur`, `bck` backup server),
    servers only."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# "):
        raise HAProxyReplyError(f"show stat: no CSV header in {text[:80]!r}")
    rows = [lines[0][2:], *(ln for ln in lines[1:] if ln.strip())]
    # HAProxy quotes no field of its own; a plain split is the csv module's answer for lines
    # without quotes, at a fraction of its cost (every read of every sync has this output).
    # Anything else (a quote, a NUL, a line longer than csv's field limit) goes through csv.
    limit = csv.field_size_limit()
    plain = not any('"' in ln or "\x00" in ln or len(ln) > limit for ln in rows)
    if plain:
        cells = [rows[0].split(",")]
    else:
        try:  # csv refuses a field over its size limit (128 KiB): garbage, not a crash
            cells = list(csv.reader(rows))
        except csv.Error as e:
            raise HAProxyReplyError(f"show stat: bad CSV ({e})") from None
    header = cells[0]
    try:
        ix = [header.index(k) for k in ("pxname", "svname", "scur", "bck")]
    except ValueError:
        raise HAProxyReplyError("show stat: header lacks pxname/svname/scur/bck") from None
    ix_px, ix_sv, ix_scur, ix_bck = ix
    width = max(ix) + 1
    if plain:  # a row's columns after the last one read are not split (~100 in all)
        cells += [ln.split(",", width) for ln in rows[1:]]
    out: dict[tuple[str, str], tuple[int, bool]] = {}
    for row in cells[1:]:
        if len(row) < width:
            raise HAProxyReplyError(f"show stat: short row {','.join(row)[:120]!r}")
        if row[ix_sv] in ("FRONTEND", "BACKEND"):
            continue
        try:
            out[(row[ix_px], row[ix_sv])] = (int(row[ix_scur] or 0), row[ix_bck] == "1")
        except ValueError:
            raise HAProxyReplyError(f"show stat: scur {row[ix_scur]!r} is not a number") from None
    return out


def parse_state_batch(text: str) -> HAProxyState:
    """The reply to `STATE_BATCH`: three outputs, each ended by an empty line."""
    try:
        info_txt, rest = text.split("\n\n", 1)
        servers_txt, stat_txt = rest.split("\n\n", 1)
    except ValueError:
        raise HAProxyReplyError(f"state batch: expected 3 outputs in {text[:120]!r}") from None
    info = parse_info(info_txt)
    backends = parse_servers_state(servers_txt)
    stats = parse_stat(stat_txt)
    for be, servers in backends.items():
        for name, srv in servers.items():
            n, backup = stats.get((be, name), (0, False))
            if n or backup:
                servers[name] = replace(srv, sessions=n, backup=backup)
    return HAProxyState(info=info, backends=backends)


def parse_targeted_batch(text: str, backends: list[str]) -> HAProxyState:
    """The reply to `targeted_batch(backends)`; a backend HAProxy does not have is left out
    (as in the full state), any other error raises."""
    return parse_targeted_outputs(split_replies(text, 1 + 2 * len(backends)), backends)


def parse_targeted_outputs(outputs: Sequence[str], backends: list[str]) -> HAProxyState:
    """`parse_targeted_batch` on a reply already split per command (`show info`, then two
    outputs per backend)."""
    if len(outputs) != 1 + 2 * len(backends):
        raise HAProxyReplyError(f"expected {1 + 2 * len(backends)} outputs, got {len(outputs)}")
    info = parse_info(outputs[0])
    out: dict[str, dict[str, ServerState]] = {}
    for i, b in enumerate(backends):
        servers_txt, stat_txt = outputs[1 + 2 * i], outputs[2 + 2 * i]
        if servers_txt.strip() in _NO_BACKEND and stat_txt.strip() in _NO_BACKEND:
            continue
        servers = parse_servers_state(servers_txt).get(b, {})
        stats = parse_stat(stat_txt)
        for name, srv in servers.items():
            n, backup = stats.get((b, name), (0, False))
            if n or backup:
                servers[name] = replace(srv, sessions=n, backup=backup)
        out[b] = servers
    return HAProxyState(info=info, backends=out)


def parse_maps(text: str) -> list[tuple[int, str]]:
    """`show map`: (id, file) of every map HAProxy loaded."""
    out: list[tuple[int, str]] = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        ident, _, rest = line.partition(" ")
        if not ident.isdigit() or not rest.startswith("(") or ")" not in rest:
            raise HAProxyReplyError(f"show map: unexpected line {line[:120]!r}")
        out.append((int(ident), rest[1:rest.index(")")]))
    return out


def split_replies(text: str, count: int) -> list[str]:
    """Split the reply of `count` `;`-joined commands into one output per command.

    Each command's output ends with one empty line; a successful state change prints
    nothing but that empty line (facts A.2). Raises when the count does not match,
    which means a command's reply was cut or HAProxy closed the connection early.
    """
    outputs: list[str] = []
    current: list[str] = []
    # The piece after the last "\n" is not a line: empty, or the cut end of a reply.
    for line in text.split("\n")[:-1]:
        if line == "":
            outputs.append("\n".join(current))
            current = []
            if len(outputs) == count:
                break
        else:
            current.append(line)
    if len(outputs) != count:
        raise HAProxyReplyError(
            f"expected {count} replies, got {len(outputs)} in {text[:200]!r}"
        )
    return outputs


# `set server B/S addr IP port P` (facts A.1): one line naming what changed, by whom.
_ADDR_OK = re.compile(
    r"(?:IP changed from '[^']*' to '[^']*'|no need to change the addr)"
    r"(?:, (?:port changed from '\d+' to '\d+'|no need to change the port))?"
    r" by 'stats socket command'"
)


def set_addr_ok(output: str) -> bool:
    """Whether the output of one `set server B/S addr ...` says the address is in place.

    Unlike state changes, success is NOT an empty reply: `IP changed from '127.0.0.1' to
    '127.0.0.5', port changed from '1' to '6379' by 'stats socket command'`, or `no need to
    change the addr...` when it already was. Errors: `Invalid addr ...`, `No such server.`,
    `Update for the current server address family is only supported through configuration
    file ...` (an `init-addr none` slot), `Permission denied`...
    """
    return _ADDR_OK.fullmatch(output.strip()) is not None


def parse_old_workers(text: str) -> list[int]:
    """The master CLI's `show proc`: the PIDs listed under `# old workers` (workers a reload
    left, still holding sessions), in the order listed."""
    if not text.lstrip().startswith("#<PID>"):
        raise HAProxyReplyError(f"show proc: unexpected reply {text[:120]!r}")
    out: list[int] = []
    section = ""
    for line in text.splitlines():
        if line.startswith("#"):
            section = line.strip("# ").lower()
            continue
        pid, _, rest = line.strip().partition(" ")
        if section == "old workers" and pid:
            if not pid.isdigit() or not rest.strip().startswith("worker"):
                raise HAProxyReplyError(f"show proc: unexpected line {line[:120]!r}")
            out.append(int(pid))
    return out


_SESSION = re.compile(r"^(0x[0-9a-f]+): .*? be=(\S+) srv=(\S+) ", re.M)


def parse_sessions(text: str, servers: Collection[tuple[str, str]]) -> list[str]:
    """`show sess`: the ids (`0x...`) of the streams whose backend/server is one of
    `servers`. Lines of another shape (the CLI's own stream, continuation lines) are not
    streams to a server and are skipped."""
    wanted = set(servers)
    return [m.group(1) for m in _SESSION.finditer(text) if (m.group(2), m.group(3)) in wanted]
