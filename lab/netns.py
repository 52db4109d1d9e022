"""Network namespaces and the partitions cut inside them (root only).

- `Namespace`: a fresh network namespace (`ip netns add`, loopback up) as a context manager,
  for the side that starts a drill: `run()` executes a program inside it (`ip netns exec`,
  which execs in place: the PIDs are the real ones); on exit every process still inside is
  stopped by PID (SIGTERM, bounded wait, SIGKILL) and the namespace is deleted, whatever
  happened. With it goes every address and firewall rule made inside it.
- `Firewall`: for the side that runs inside such a namespace: cuts links between loopback
  addresses with `iptables` DROP rules in the namespace's own tables, each cut in its own
  chain (added, and removed on heal, in one `iptables-restore` transaction each).
- `unavailable_reason()`: why namespaces cannot be used here (not root, `ip netns add`
  refused), or None.

Must not touch the host's network or firewall: `Firewall` refuses to work unless this process
runs in a namespace other than PID 1's (and, when named, in exactly that one); nothing here
changes an interface, a route or a rule outside the namespace it created. Must not stop a
process that is not inside a namespace it created itself.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

IP = shutil.which("ip") or "/usr/sbin/ip"
IPTABLES = shutil.which("iptables") or "/usr/sbin/iptables"
IPTABLES_RESTORE = shutil.which("iptables-restore") or "/usr/sbin/iptables-restore"

#: Every namespace this module creates is named `<PREFIX><pid>-<random>`.
PREFIX = "shx-part-"


class NetnsError(RuntimeError):
    """A namespace could not be created, used or deleted, or a rule could not be applied."""


def _run(argv: Sequence[str], timeout_s: float = 10.0,
         stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), input=stdin, capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetnsError(f"{' '.join(argv)}: {e}") from None


def unavailable_reason() -> str | None:
    """Why this process cannot run a drill in its own network namespace, or None if it can
    (it is root and a throwaway `ip netns add` works)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if not os.path.exists(IP):
        return f"no 'ip' command ({IP}): install iproute2"
    if not os.path.exists(IPTABLES_RESTORE):
        return f"no 'iptables-restore' ({IPTABLES_RESTORE}): install iptables"
    try:
        with Namespace() as ns:
            probe = ns.run([IPTABLES, "-w", "5", "-S", "OUTPUT"], timeout_s=10.0)
            if probe.returncode != 0:
                return f"iptables does not work inside a namespace: {probe.stderr.strip()}"
    except NetnsError as e:
        return f"cannot create a network namespace: {e}"
    return None


def own_namespace_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def current_namespace() -> str | None:
    """The name (`ip netns identify`) of the namespace this process runs in, None if it is not
    a named one."""
    res = _run([IP, "netns", "identify", str(os.getpid())])
    name = res.stdout.strip()
    return name or None


class Namespace:
    """A fresh, uniquely named network namespace with its loopback up; deleted on exit."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.created = False

    def __enter__(self) -> Namespace:
        res = _run([IP, "netns", "add", self.name])
        if res.returncode != 0:
            raise NetnsError(f"ip netns add {self.name}: {res.stderr.strip() or res.returncode}")
        self.created = True
        try:
            res = _run([IP, "-n", self.name, "link", "set", "lo", "up"])
            if res.returncode != 0:
                raise NetnsError(f"ip -n {self.name} link set lo up: {res.stderr.strip()}")
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.delete()

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside the namespace."""
        return [IP, "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], timeout_s: float,
            env: Mapping[str, str] | None = None,
            stderr: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the namespace, stdout captured (and stderr, unless `stderr` says
        otherwise, e.g. None to pass it through); on timeout the program is killed by PID and
        NetnsError raised. Processes it leaves behind are stopped by `delete()`."""
        with subprocess.Popen(self.exec_argv(argv), stdout=subprocess.PIPE, stderr=stderr,
                              stdin=subprocess.DEVNULL, text=True,
                              env=None if env is None else dict(env)) as p:
            try:
                out, err = p.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._stop([p.pid])
                p.communicate(timeout=10.0)
                raise NetnsError(f"{' '.join(argv)} did not finish within {timeout_s:g} s "
                                 f"in namespace {self.name}") from None
            except BaseException:  # Ctrl-C: stop it (and, in delete(), what it started)
                self._stop([p.pid])
                p.communicate(timeout=10.0)
                raise
        return subprocess.CompletedProcess(p.args, p.returncode, out, err or "")

    def pids(self) -> list[int]:
        """PIDs of the processes inside the namespace (they can only be ours: we made it)."""
        if not self.created:
            return []
        res = _run([IP, "netns", "pids", self.name])
        return [int(w) for w in res.stdout.split() if w.isdigit()]

    def _stop(self, pids: Iterable[int], grace_s: float = 10.0) -> None:
        """SIGTERM each PID (and SIGCONT: a stopped process only acts on it once resumed),
        wait up to `grace_s` for them to go, then SIGKILL the rest."""
        pids = list(pids)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def delete(self) -> None:
        """Stop every process still inside (by PID), then delete the namespace. Idempotent."""
        if not self.created:
            return
        for _ in range(3):  # a stopping process may have started another meanwhile
            pids = self.pids()
            if not pids:
                break
            self._stop(pids)
        res = _run([IP, "netns", "del", self.name])
        if res.returncode != 0:
            raise NetnsError(f"ip netns del {self.name}: {res.stderr.strip()}")
        self.created = False


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie of ours counts as gone; it is reaped here if ours)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


# --------------------------------------------------------------------------- inside


@dataclass(frozen=True)
class Cut:
    """Every link between a host of `side_a` and a host of `side_b` (IPv4 addresses), both
    directions. Links within a side are kept."""

    name: str  # chain name: letters, digits, '-' (iptables allows 28 characters)
    side_a: frozenset[str]
    side_b: frozenset[str]

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 28 or not all(
                c.isalnum() or c == "-" for c in self.name):
            raise ValueError(f"bad chain name {self.name!r}")
        if self.side_a & self.side_b:
            raise ValueError(f"a host cannot be on both sides: {sorted(self.side_a & self.side_b)}")
        for host in self.side_a | self.side_b:
            parts = host.split(".")
            if len(parts) != 4 or not all(p.isdigit() and int(p) < 256 for p in parts):
                raise ValueError(f"not an IPv4 address: {host!r}")

    def pairs(self) -> list[tuple[str, str]]:
        """(source, destination) of every dropped direction, sorted."""
        return sorted([(a, b) for a in self.side_a for b in self.side_b]
                      + [(b, a) for a in self.side_a for b in self.side_b])

    def add_rules(self) -> str:
        """iptables-restore input (with --noflush) adding this cut: its own chain, jumped to
        first from OUTPUT (loopback packets cross OUTPUT once, on the sending side)."""
        lines = ["*filter", f":{self.name} - [0:0]"]
        lines += [f"-A {self.name} -s {s}/32 -d {d}/32 -j DROP" for s, d in self.pairs()]
        lines += [f"-I OUTPUT 1 -j {self.name}", "COMMIT", ""]
        return "\n".join(lines)

    def remove_rules(self) -> str:
        """iptables-restore input (with --noflush) removing this cut and its chain."""
        return "\n".join(["*filter", f"-D OUTPUT -j {self.name}", f"-F {self.name}",
                          f"-X {self.name}", "COMMIT", ""])


class Firewall:
    """Cuts and heals links inside the namespace this process runs in (never the host's).

    Thread-safe: several drills running at once (one per setup) each add and remove their own
    cut. `heal_all()` removes whatever is left.
    """

    def __init__(self, expected_namespace: str, outside_inode: int | None = None) -> None:
        reason = self.refusal(expected_namespace, outside_inode)
        if reason is not None:
            raise NetnsError(reason)
        self._lock = threading.Lock()
        self._active: dict[str, Cut] = {}

    @staticmethod
    def refusal(expected_namespace: str | None, outside_inode: int | None = None) -> str | None:
        """Why cutting links here would be unsafe, or None: this process must run in the
        named namespace `expected_namespace` (one that `Namespace` made), and not in the
        namespace of PID 1 (when readable) nor in `outside_inode` (the namespace of the
        process that made it, where the host's firewall is)."""
        hint = ("run the drill through `sentinel-haproxy drill --partition`, which makes a "
                "network namespace for it")
        if not expected_namespace or not expected_namespace.startswith(PREFIX):
            return f"no namespace of this lab named ({expected_namespace!r}): refusing; {hint}"
        own = own_namespace_inode()
        outside = {outside_inode} if outside_inode is not None else set()
        with contextlib.suppress(OSError):  # not readable in some containers
            outside.add(os.stat("/proc/1/ns/net").st_ino)
        if own in outside:
            return ("this process runs in the host's network namespace: refusing to change "
                    f"its firewall; {hint}")
        current = current_namespace()
        if current != expected_namespace:
            return (f"this process is not in network namespace {expected_namespace!r} "
                    f"(it is in {current!r}): refusing; {hint}")
        return None

    def _restore(self, text: str) -> None:
        res = _run([IPTABLES_RESTORE, "--noflush", "-w", "5"], stdin=text)
        if res.returncode != 0:
            raise NetnsError(f"iptables-restore failed ({res.returncode}): "
                             f"{res.stderr.strip()}\n{text}")

    def cut(self, cut: Cut) -> None:
        """Drop every packet between the two sides, from now on (one transaction)."""
        with self._lock:
            if cut.name in self._active:
                raise NetnsError(f"cut {cut.name} is already active")
            self._restore(cut.add_rules())
            self._active[cut.name] = cut

    def heal(self, name: str) -> bool:
        """Remove cut `name` (one transaction); False if it was not active."""
        with self._lock:
            cut = self._active.pop(name, None)
            if cut is None:
                return False
            self._restore(cut.remove_rules())
            return True

    def heal_all(self) -> None:
        for name in list(self._active):
            self.heal(name)

    def rules(self) -> str:
        """`iptables -S` of the namespace (for logs and tests)."""
        return _run([IPTABLES, "-w", "5", "-S"]).stdout
