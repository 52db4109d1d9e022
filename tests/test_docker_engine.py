"""tests/docker_engine.py and tests/compose_stack.py without an engine: why a machine cannot run
one (the docker test's skip message), the mirror debootstrap uses, the env file the stack runs
with. No root, no dockerd needed."""

from __future__ import annotations

import os
from pathlib import Path

import docker_engine
import pytest
from compose_stack import ENV_EXAMPLE, write_env_file
from docker_engine import Engine, EngineUnavailable, debian_mirror, missing_prerequisites


def test_missing_prerequisites_names_root_and_the_packages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not root and a missing tool are both reported, with the Debian package to install."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(docker_engine, "tool",
                        lambda name: None if name in ("debootstrap", "dockerd") else "/bin/true")
    why = missing_prerequisites()
    assert why[0] == "not root (dockerd needs root)"
    assert "debootstrap docker.io" in why[1] and "scripts/install-deps.sh" in why[1]


def test_a_dockerd_that_exits_makes_the_engine_unavailable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A dockerd that dies at start raises EngineUnavailable (a skip) quoting its exit code;
    the engine's directory is removed afterwards."""
    monkeypatch.setattr(docker_engine, "WORKDIR_PARENT", tmp_path)  # not where runs look
    real_tool = docker_engine.tool
    monkeypatch.setattr(docker_engine, "tool",
                        lambda name: "/bin/false" if name == "dockerd" else real_tool(name))
    engine = Engine()
    try:
        with pytest.raises(EngineUnavailable, match="dockerd exited with 1"):
            engine.start(timeout_s=20)
    finally:
        assert engine.stop() == []
        assert engine.remove() == []
    assert not engine.workdir.exists()


def test_debian_mirror_comes_from_apt_sources(tmp_path: Path) -> None:
    """deb822 .sources stanzas for the release win; one-line sources.list is the fallback."""
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n")
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text(
        "deb [arch=amd64] http://other.example/debian bookworm main\n")
    assert debian_mirror(tmp_path) == "http://other.example/debian"
    (tmp_path / "sources.list").unlink()
    assert debian_mirror(tmp_path) == "http://deb.debian.org/debian"


def test_env_file_is_a_copy_of_the_example_with_generated_passwords(tmp_path: Path) -> None:
    """Every `change-me` value gets its own [0-9a-f] password; comments are kept; nothing is
    written next to the compose file."""
    env = tmp_path / ".env"
    repo_env = ENV_EXAMPLE.parent / ".env"
    had_repo_env = repo_env.exists()
    values = write_env_file(env)
    assert set(values) == {"REDIS_PASSWORD", "SENTINEL_PASSWORD"}
    assert values["REDIS_PASSWORD"] != values["SENTINEL_PASSWORD"]
    assert all(len(v) == 32 and v.isalnum() for v in values.values())
    text = env.read_text()
    assert "=change-me" not in text
    assert [ln for ln in text.splitlines() if ln.startswith("#")] == [
        ln for ln in ENV_EXAMPLE.read_text().splitlines() if ln.startswith("#")]
    assert env.stat().st_mode & 0o077 == 0
    assert repo_env.exists() == had_repo_env


def test_reap_stale_removes_dead_engines_directories(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A work directory left by a crashed run whose dockerd is gone is removed; a directory
    whose pidfile names a live process that is not a dockerd on it is left running."""
    monkeypatch.setattr(docker_engine, "WORKDIR_PARENT", tmp_path)
    dead = tmp_path / "shx-docker-dead"
    (dead / "data").mkdir(parents=True)
    (dead / "docker.pid").write_text("999999999\n")
    other = tmp_path / "shx-docker-other"
    other.mkdir()
    (other / "docker.pid").write_text(f"{os.getpid()}\n")  # this pytest: not a dockerd
    notes = Engine.reap_stale()
    assert notes == []
    assert not dead.exists() and not other.exists()
