"""The wheel carries the daemon, the lab and the shipped configs: `pip install` of the built
wheel into a fresh virtualenv, then `sentinel-haproxy demo --quick` runs from a directory far
from this checkout (the lab reads its configs from the installed package, not the repo)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from itest_support import REPO_ROOT

from lab.localstack import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(REPO_ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (whl,) = out.glob("sentinel_haproxy-*.whl")
    return whl


def test_wheel_holds_daemon_lab_and_configs(wheel: Path) -> None:
    """Every module of both packages and the four shipped config files are in the wheel."""
    names = set(zipfile.ZipFile(wheel).namelist())
    for pkg in ("controller", "lab"):
        for src in (REPO_ROOT / pkg).glob("*.py"):
            assert f"{pkg}/{src.name}" in names
    for f in ("haproxy/haproxy.cfg", "haproxy/haproxy-classic.cfg", "sentinel/redis.conf",
              "sentinel/sentinel.conf"):
        assert f"lab/shipped-files/{f}" in names


def test_demo_runs_from_an_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    """In a fresh virtualenv with only the wheel installed, `sentinel-haproxy demo --quick`
    starts the reference layout from the packaged configs, prints the port map and stops."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=60).stdout.strip())
    # The dependencies come from this test's environment (no network needed); the project
    # itself only from the wheel: a .pth line adds a directory without running its .pth files,
    # so the editable install of this checkout stays out.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
         "--no-index", str(wheel)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    hosts = [f"127.0.0.{i}" for i in (2, 3, 4, 5, 6, 7, 20, 21, 22)]
    redis_port = free_port(hosts)
    sentinel_port = free_port(hosts, exclude=frozenset({redis_port}))
    first = free_port(["127.0.0.1"], count=6)
    stats = free_port(["127.0.0.1"], exclude=frozenset(range(first, first + 6)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENTINEL_HAPROXY_",
                                                                    "PYTHON"))}
    run = subprocess.run(
        [str(venv / "bin" / "sentinel-haproxy"), "demo", "--quick",
         "--first-port", str(first), "--stats-port", str(stats),
         "--redis-port", str(redis_port), "--sentinel-port", str(sentinel_port),
         "--workdir", str(tmp_path / "demo")],
        cwd=tmp_path, capture_output=True, text=True, timeout=180, env=env, check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "port map" in run.stdout
    where = subprocess.run([str(py), "-c", "import lab; print(lab.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, check=True, timeout=60)
    assert where.stdout.startswith(str(venv)), where.stdout
