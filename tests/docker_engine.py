"""A private Docker engine for tests/test_docker.py, and the stand-in base images it needs.

What it does: starts Debian's ``dockerd`` (package docker.io) with its own data root, exec root,
socket, pidfile and config file under a fresh temporary directory; runs ``docker`` and
``docker-compose`` against that socket only; gives it ``redis:7.0``, ``haproxy:2.6`` and
``python:3.11-slim`` built from Debian's packages (tests/standin_images/: no registry is reachable
here), from a debootstrap'd bookworm imported as ``local/bookworm``; keeps those images as one
``docker save`` archive in a cache directory so that later runs only ``docker load`` them; stops
the daemon by the PID it started and removes everything it made except that archive.

What it must not do: talk to any other engine (never the default socket), stop a process it did
not start (no pkill/killall: PIDs only), pull from a registry, or leave anything behind but the
image archive in :func:`cache_dir` (containers, networks and volumes are the caller's to remove
with ``docker-compose down -v``; :meth:`Engine.leftovers` says what is still there).

:class:`EngineUnavailable` means "this machine cannot run an engine" (not root, packages missing,
dockerd does not start, debootstrap impossible): the test skips with its message.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

from itest_support import running

from lab.wait import WaitTimeout, wait_until

T = TypeVar("T")

STANDIN_DIR = Path(__file__).resolve().parent / "standin_images"
# Official image name -> stand-in Dockerfile (tests/standin_images/), built in this order.
STANDINS = {
    "redis:7.0": "redis.Dockerfile",
    "haproxy:2.6": "haproxy.Dockerfile",
    "python:3.11-slim": "python.Dockerfile",
}
BASE_IMAGE = "local/bookworm"
SUITE = "bookworm"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CACHE_ENV = "SENTINEL_HAPROXY_DOCKER_CACHE"
DEFAULT_CACHE = Path("/var/cache/sentinel-haproxy-tests")
CACHE_FORMAT = "1"  # bump to invalidate every cached archive
WORKDIR_PARENT = Path(tempfile.gettempdir())
WORKDIR_PREFIX = "shx-docker-"
GLOBAL_RUN_DIRS = (Path("/run/docker"), Path("/run/containerd"))
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PACKAGES = {"dockerd": "docker.io", "docker": "docker.io", "docker-compose": "docker-compose",
            "debootstrap": "debootstrap"}


class EngineUnavailable(Exception):
    """This machine cannot run a private Docker engine; the message says why (for a skip)."""


#: What counts as "not yet" while waiting on docker: a command failing, a socket refusing.
DOCKER_NOT_YET = (OSError, subprocess.SubprocessError, ValueError, KeyError)


def wait_for(cond: Callable[[], T | None], timeout_s: float, what: str,
             interval_s: float = 0.1) -> T:
    """The lab's one bounded wait (lab.wait.wait_until), with docker's "not yet" errors."""
    return wait_until(cond, timeout_s, what, interval_s, not_yet=DOCKER_NOT_YET)


def tool(name: str) -> str | None:
    """Path of ``name``, looking in the sbin directories too; Debian's docker client first (the
    daemon's own version) over any other ``docker`` on PATH."""
    if name == "docker" and os.access("/usr/bin/docker", os.X_OK):
        return "/usr/bin/docker"
    path = os.environ.get("PATH", "") + ":" + SBIN_PATH
    return shutil.which(name, path=path)


def missing_prerequisites() -> list[str]:
    """Why an engine cannot be started here (empty when it can be tried)."""
    out = []
    if os.geteuid() != 0:
        out.append("not root (dockerd needs root)")
    missing = sorted({pkg for name, pkg in PACKAGES.items() if tool(name) is None})
    if missing:
        out.append(f"missing Debian packages: {' '.join(missing)} (scripts/install-deps.sh)")
    return out


def cache_dir() -> Path:
    """Where the stand-in image archive is kept between runs (created if needed)."""
    d = Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def exclusive(lock_path: Path, timeout_s: float) -> Iterator[None]:
    """Hold an exclusive flock on ``lock_path``: one engine test per machine at a time (the
    compose file publishes fixed host ports and uses a fixed subnet)."""
    with open(lock_path, "a+") as f:
        wait_for(lambda: _try_lock(f.fileno()), timeout_s,
                 f"the lock {lock_path} (another docker test running?)", interval_s=0.5)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt uses here (its sources), for debootstrap."""
    sources = apt_dir / "sources.list.d"
    texts = [p.read_text() for p in sorted(sources.glob("*.sources"))] if sources.is_dir() else []
    for text in texts:  # deb822: a stanza with URIs and a Suites line naming the release
        for stanza in text.split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:(.*)$", stanza, re.M)
            if uris and suites and SUITE in suites.group(1).split():
                return uris.group(1)
    lists = [apt_dir / "sources.list", *sorted(sources.glob("*.list"))]
    for p in lists:
        if p.exists():
            m = re.search(rf"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{SUITE}\s", p.read_text(), re.M)
            if m:
                return m.group(1)
    return "http://deb.debian.org/debian"


def client_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process' environment without Docker/Compose client settings or the stack's
    passwords (they would override the env file), plus ``extra``."""
    drop = ("DOCKER_", "COMPOSE_")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(drop) and k not in ("REDIS_PASSWORD", "SENTINEL_PASSWORD")}
    env["PATH"] = env.get("PATH", "") + ":" + SBIN_PATH
    env.update(extra)
    return env


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"({path}: {e})"


class Engine:
    """One private dockerd; :meth:`start`, then :meth:`docker` / :meth:`compose`, then
    :meth:`stop` (by PID) and :meth:`remove` (its directories)."""

    def __init__(self, workdir: Path | None = None) -> None:
        # Short path: containerd's unix sockets live under the exec root (108-byte limit).
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX,
                                                        dir=WORKDIR_PARENT))
        self.data_root = self.workdir / "data"
        self.exec_root = self.workdir / "exec"
        self.socket = self.workdir / "docker.sock"
        self.pidfile = self.workdir / "docker.pid"
        self.log_path = self.workdir / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None  # dockerd's PID (ours, or a stale one's: see reap_stale)
        self.env = client_env({"DOCKER_HOST": f"unix://{self.socket}"})

    # ------------------------------------------------------------------ life cycle

    def start(self, timeout_s: float = 60) -> None:
        """Start dockerd and wait until it answers; EngineUnavailable if it cannot."""
        dockerd = tool("dockerd")
        if dockerd is None:
            raise EngineUnavailable("dockerd not found (Debian package docker.io)")
        config = self.workdir / "daemon.json"
        # The trust key would otherwise be written to /etc/docker/key.json.
        config.write_text(json.dumps({"deprecated-key-path": str(self.workdir / "key.json")}))
        args = [
            dockerd, "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
            "--host", f"unix://{self.socket}", "--pidfile", str(self.pidfile),
            "--config-file", str(config),
            # No iptables rules and no default bridge: nothing of the host's firewall or
            # network is touched. Containers on a user-defined bridge still reach each other
            # (same L2 bridge), the host reaches them on their bridge IPs, and published ports
            # work through docker-proxy (the userland proxy: it listens on the host port and
            # connects to the container's IP), which is why it is enabled explicitly.
            "--iptables=false", "--bridge=none", "--userland-proxy=true",
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env,
                                         start_new_session=True)
        self.pid = self.proc.pid

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise EngineUnavailable(
                    f"dockerd exited with {self.proc.returncode}:\n{_tail(self.log_path)}")
            res = self.docker("version", "--format", "{{.Server.Version}}", check=False,
                              timeout_s=10)
            return res.returncode == 0

        try:
            wait_for(up, timeout_s, "dockerd to answer on its socket", interval_s=0.2)
        except WaitTimeout as e:
            raise EngineUnavailable(f"{e}\n{_tail(self.log_path)}") from None

    def running(self) -> bool:
        """Whether dockerd is alive (our own child is reaped when it has exited)."""
        if self.proc is not None:
            return self.proc.poll() is None
        return self.pid is not None and running(self.pid)

    @classmethod
    def reap_stale(cls) -> list[str]:
        """Stop and remove engines a crashed earlier run left behind: a work directory whose
        pidfile names a live dockerd started on that directory. Call it holding the lock
        (:func:`exclusive`): then no other run's engine can be live."""
        out = []
        for d in sorted(WORKDIR_PARENT.glob(WORKDIR_PREFIX + "*")):
            stale = cls(d)
            try:
                pid = int(stale.pidfile.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError):
                pid, cmdline = 0, b""
            if pid and running(pid) and str(stale.data_root).encode() in cmdline:
                stale.pid = pid
                out.append(f"stopped dockerd {pid} left running by an earlier run in {d}")
                out += stale.stop()
            out += stale.remove()
        return out

    def descendants(self) -> list[int]:
        """PIDs of dockerd's child processes (containerd, docker-proxy) and of processes that
        name this engine's directories (containerd shims, re-parented away from dockerd)."""
        if self.pid is None:
            return []
        parents: dict[int, int] = {}
        named: set[int] = set()
        for pid in _pids():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
            if str(self.workdir).encode() in cmdline:
                named.add(pid)
        out = set(named)
        frontier = {self.pid}
        while frontier:
            children = {pid for pid, ppid in parents.items() if ppid in frontier} - out
            out |= children
            frontier = children
        out.discard(self.pid)
        return sorted(out)

    def stop(self, timeout_s: float = 40) -> list[str]:
        """Remove what is left in the engine (containers, networks, volumes: a problem when
        there is any), SIGTERM dockerd by PID and wait, SIGKILL it (and what it started) if it
        does not stop in time. Returns the problems seen (empty when all was clean)."""
        problems: list[str] = []
        pid = self.pid
        if pid is None:
            return problems
        if self.running() and self.answers():
            # Networks outlive a stopped dockerd (their bridge stays on the host, with its
            # subnet's route): remove what is left through the API first.
            left = self.leftovers()
            if left:
                problems.append(f"still there when the engine stopped (removed): {left}")
                problems += self.clear()
        children = self.descendants()
        if self.running():
            os.kill(pid, signal.SIGTERM)
            try:
                wait_for(lambda: not self.running(), timeout_s, f"dockerd {pid} to exit")
            except WaitTimeout:
                problems.append(f"dockerd {pid} ignored SIGTERM for {timeout_s} s: killed")
                os.kill(pid, signal.SIGKILL)
                wait_for(lambda: not self.running(), 10, f"dockerd {pid} to die")

        def gone() -> bool:
            return not [p for p in children if running(p)]

        try:
            wait_for(gone, 15, "dockerd's children to exit", interval_s=0.1)
        except WaitTimeout:
            for child in children:
                if running(child):
                    problems.append(f"pid {child} ({_comm(child)}) outlived dockerd: killed")
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGKILL)
        return problems

    def remove(self) -> list[str]:
        """Unmount what is left under the work directory and delete it (the engine must be
        stopped). Returns the problems seen."""
        problems: list[str] = []
        for mnt in sorted(_mounts_under(self.workdir), key=len, reverse=True):
            # dockerd leaves its bind mount of the host's network namespace (netns/default)
            # on exit: expected. Anything else mounted is a leak.
            if mnt != str(self.exec_root / "netns" / "default"):
                problems.append(f"still mounted after dockerd stopped: {mnt}")
            subprocess.run(["umount", "-l", mnt], check=False, capture_output=True, timeout=30)
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.workdir.exists():
            problems.append(f"could not remove {self.workdir}")
        # dockerd and containerd also make /run/docker/plugins and /run/containerd/s (fixed
        # paths). Once no engine runs on the machine, empty ones are nobody's: removed.
        if not [pid for pid in _pids() if _comm(pid) in ("dockerd", "containerd")]:
            for d in GLOBAL_RUN_DIRS:
                for sub in sorted(d.glob("**/*"), key=lambda p: len(str(p)), reverse=True):
                    with contextlib.suppress(OSError):
                        sub.rmdir()  # empty directories only
                with contextlib.suppress(OSError):
                    d.rmdir()
        return problems

    # ------------------------------------------------------------------ clients

    def docker(self, *args: str, timeout_s: float = 120, check: bool = True,
               stdin: int | None = None) -> subprocess.CompletedProcess[str]:
        """Run the docker client against this engine; raise with its output when ``check``."""
        docker = tool("docker")
        if docker is None:
            raise EngineUnavailable("docker client not found (Debian package docker.io)")
        return _run([docker, *args], self.env, timeout_s, check, stdin)

    def compose(self, compose_file: Path, project: str, env_file: Path, *args: str,
                timeout_s: float = 180,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run docker-compose on ``compose_file`` as project ``project`` with ``env_file``."""
        exe = tool("docker-compose")
        if exe is None:
            raise EngineUnavailable("docker-compose not found (Debian package docker-compose)")
        return _run([exe, "-f", str(compose_file), "-p", project, "--env-file", str(env_file),
                     *args], self.env, timeout_s, check, None)

    def build(self, tag: str, context: Path, dockerfile: Path, log_name: str,
              timeout_s: float = 600) -> None:
        """``docker build`` on the host network (the daemon has no default bridge, so a build
        container has no network otherwise; apt and pip need it). Output to a log file."""
        log = self.workdir / log_name
        docker = tool("docker")
        assert docker is not None
        with open(log, "w") as out:
            res = subprocess.run([docker, "build", "--network", "host", "-t", tag,
                                  "-f", str(dockerfile), str(context)],
                                 stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                 timeout=timeout_s, check=False)
        assert res.returncode == 0, f"docker build {tag} failed:\n{_tail(log, 40)}"

    def answers(self) -> bool:
        return self.docker("version", check=False, timeout_s=10).returncode == 0

    def clear(self) -> list[str]:
        """Remove every container (with its anonymous volumes), user-defined network and
        volume of this engine. Returns what failed."""
        problems = []
        containers = self.docker("ps", "-aq").stdout.split()
        if containers:
            res = self.docker("rm", "-f", "-v", *containers, check=False, timeout_s=120)
            if res.returncode:
                problems.append(f"docker rm: {res.stderr.strip()}")
        nets = [n for n in self.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
                if n not in ("host", "none", "bridge")]
        if nets:
            res = self.docker("network", "rm", *nets, check=False)
            if res.returncode:
                problems.append(f"docker network rm: {res.stderr.strip()}")
        volumes = self.docker("volume", "ls", "-q").stdout.split()
        if volumes:
            res = self.docker("volume", "rm", "-f", *volumes, check=False)
            if res.returncode:
                problems.append(f"docker volume rm: {res.stderr.strip()}")
        return problems

    def leftovers(self) -> list[str]:
        """Every container, volume and user-defined network this engine still has."""
        out = [f"container {c}" for c in self.docker("ps", "-aq").stdout.split()]
        out += [f"volume {v}" for v in self.docker("volume", "ls", "-q").stdout.split()]
        nets = self.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
        out += [f"network {n}" for n in nets if n not in ("host", "none", "bridge")]
        return out


def _run(cmd: list[str], env: Mapping[str, str], timeout_s: float, check: bool,
         stdin: int | None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, env=dict(env), capture_output=True, text=True,
                         timeout=timeout_s, check=False,
                         stdin=stdin if stdin is not None else subprocess.DEVNULL)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:4])}... exited {res.returncode}:\n"
                             f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def _pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mnt = line.split()[4].replace("\\040", " ")
        if mnt.startswith(prefix):
            out.append(mnt)
    return out


# ---------------------------------------------------------------------- stand-in images


def standins_key(mirror: str) -> str:
    """Changes whenever the stand-ins would be built differently."""
    h = hashlib.sha256()
    for part in (CACHE_FORMAT, SUITE, mirror):
        h.update(part.encode() + b"\0")
    for f in sorted(STANDIN_DIR.iterdir()):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    if HOST_CA_BUNDLE.exists():
        h.update(HOST_CA_BUNDLE.read_bytes())
    return h.hexdigest()[:16]


def ensure_standins(engine: Engine, cache: Path) -> str:
    """Give the engine the stand-in images, from the cached archive when there is one for the
    current recipes, else built (and archived). Returns "cached" or "built"."""
    mirror = debian_mirror()
    archive = cache / f"standins-{standins_key(mirror)}.tar"
    if archive.exists():
        engine.docker("load", "-q", "-i", str(archive), timeout_s=300)
        have = set(engine.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split())
        if set(STANDINS) <= have:
            return "cached"
        archive.unlink()  # damaged: build again
    _build_base(engine, mirror)
    ctx = engine.workdir / "standin-context"
    ctx.mkdir()
    for f in STANDIN_DIR.iterdir():
        shutil.copy(f, ctx / f.name)
        (ctx / f.name).chmod(0o755 if f.suffix == ".sh" else 0o644)
    # pip in a build verifies TLS with this bundle (python.Dockerfile says why).
    bundle = ctx / "host-ca-bundle.crt"
    if HOST_CA_BUNDLE.exists():
        shutil.copy(HOST_CA_BUNDLE, bundle)
    else:
        bundle.write_text("")
    for tag, dockerfile in STANDINS.items():
        engine.build(tag, ctx, ctx / dockerfile, f"build-{dockerfile}.log")
    tmp = archive.with_suffix(".tmp")
    engine.docker("save", "-o", str(tmp), BASE_IMAGE, *STANDINS, timeout_s=300)
    tmp.rename(archive)
    for old in cache.glob("standins-*.tar"):
        if old != archive:
            old.unlink()
    return "built"


def _build_base(engine: Engine, mirror: str) -> None:
    """debootstrap a minimal bookworm and import it as BASE_IMAGE; EngineUnavailable if the
    Debian mirror cannot be used."""
    debootstrap = tool("debootstrap")
    if debootstrap is None:
        raise EngineUnavailable("debootstrap not found (Debian package debootstrap)")
    rootfs = engine.workdir / "rootfs"
    log = engine.workdir / "debootstrap.log"
    with open(log, "w") as out:
        res = subprocess.run([debootstrap, "--variant=minbase", SUITE, str(rootfs), mirror],
                             stdout=out, stderr=subprocess.STDOUT, timeout=600, check=False,
                             env=engine.env)
    if res.returncode != 0:
        raise EngineUnavailable(f"debootstrap {SUITE} from {mirror} failed:\n{_tail(log)}")
    tar = subprocess.Popen(
        ["tar", "-C", str(rootfs), "--exclude=./dev/*", "--exclude=./proc/*",
         "--exclude=./sys/*", "--exclude=./var/lib/apt/lists/*", "--exclude=./var/cache/apt/*",
         "-c", "."], stdout=subprocess.PIPE)
    assert tar.stdout is not None
    try:
        engine.docker("import", "--change", 'CMD ["bash"]', "-", BASE_IMAGE,
                      stdin=tar.stdout.fileno(), timeout_s=300)
    finally:
        tar.stdout.close()
        tar.wait(60)
    shutil.rmtree(rootfs, ignore_errors=True)
