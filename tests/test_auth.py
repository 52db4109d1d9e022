"""Authentication against REAL password-protected Sentinels and Redis nodes.

A one-group LocalStack whose nodes have `requirepass`/`masterauth` and whose sentinels have
`requirepass` and `sentinel auth-pass` (as compose/docker-compose.yml runs them). The controller
(`status`, `reconcile`, `run`) must work with the right secret (env, file or an ACL user with
the least privileges it needs), fail with an error naming authentication with a wrong or missing
one, and never print a password.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from itest_support import controller_for, ready, run_cli, servers_state, start_stack

from lab import resp
from lab.localstack import Layout, LocalStack
from lab.resp import RespError
from lab.wait import wait_until

pytestmark = pytest.mark.integration

REDIS_PW = "rpw-7c1e5a"
SENTINEL_PW = "spw-93b2d4"
WRONG_PW = "wrong-5f0e81"
ACL_USER, ACL_PW = "sentinel-haproxy", "apw-2d77c9"
# The least a controller needs on a Sentinel: reads, pub/sub on every channel, its own name.
ACL_RULES = ("on", f">{ACL_PW}", "resetchannels", "&*", "-@all", "+ping", "+info",
             "+client|setname", "+sentinel|master", "+sentinel|get-master-addr-by-name",
             "+sentinel|replicas", "+sentinel|myid", "+sentinel|sentinels", "+psubscribe")
# The same user as the runbook described it before targeted reads (MASTERS, not MASTER).
OLD_ACL_USER = "sentinel-haproxy-old"
OLD_ACL_RULES = tuple("+sentinel|masters" if r == "+sentinel|master" else r
                      for r in ACL_RULES)
SECRETS = (REDIS_PW, SENTINEL_PW, WRONG_PW, ACL_PW)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """One group, every node and sentinel password-protected; an ACL user on every sentinel."""
    st = start_stack(lambda attempt: tmp_path_factory.mktemp(f"auth{attempt}"),
                     lambda: Layout.for_tests(groups=("redis1",), redis_password=REDIS_PW,
                                              sentinel_password=SENTINEL_PW))
    try:
        for i in range(st.layout.sentinels):
            assert st.sentinel_command(i, "ACL", "SETUSER", ACL_USER, *ACL_RULES) == "OK"
            assert st.sentinel_command(i, "ACL", "SETUSER", OLD_ACL_USER,
                                       *OLD_ACL_RULES) == "OK"
        yield st
    finally:
        st.stop()


def assert_no_secret(*texts: str) -> None:
    for t in texts:
        for secret in SECRETS:
            assert secret not in t, f"a password was printed: {t[:500]}"


def test_stack_really_requires_passwords(stack: LocalStack) -> None:
    """The fixture's Sentinels refuse a client without AUTH (so the other tests mean something)."""
    with pytest.raises(RespError, match=r"NOAUTH|Authentication required"):
        resp.command(stack.sentinel_addrs[0], "SENTINEL", "MASTERS")
    with pytest.raises(RespError, match=r"NOAUTH|Authentication required"):
        resp.command(stack.nodes["redis1a"].addr, "PING")
    info = stack.redis_command("redis1b", "INFO", "replication")
    assert "master_link_status:up" in str(info)  # masterauth works


def test_status_and_reconcile_work_with_the_password_from_env(stack: LocalStack) -> None:
    """With SENTINEL_HAPROXY_SENTINEL_PASSWORD every Sentinel answers and reconcile applies."""
    env = {"SENTINEL_HAPROXY_SENTINEL_PASSWORD": SENTINEL_PW}
    st = run_cli(stack, "status", "--json", env=env)
    assert st.returncode in (0, 1), st.stderr
    report = json.loads(st.stdout)
    assert [v["error"] for v in report["sentinels"]] == [None, None, None]
    master = stack.nodes["redis1a"]
    assert report["groups"][0]["decision"]["master"] == f"{master.host}:{master.port}"
    rc = run_cli(stack, "reconcile", env=env)
    assert rc.returncode == 0, rc.stdout + rc.stderr
    assert ready(stack, "redis1_master", "redis1a") and ready(stack, "redis1_replicas", "redis1b")
    again = run_cli(stack, "status", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "in sync" in again.stdout
    assert_no_secret(st.stdout, st.stderr, rc.stdout, rc.stderr, again.stdout, again.stderr)


def test_password_file_is_read(stack: LocalStack, tmp_path: Path) -> None:
    """--sentinel-password-file (content, trailing newline stripped) authenticates."""
    f = tmp_path / "sentinel_password"
    f.write_text(SENTINEL_PW + "\n")
    res = run_cli(stack, "status", "--json", "--sentinel-password-file", str(f))
    assert res.returncode in (0, 1), res.stderr
    assert [v["error"] for v in json.loads(res.stdout)["sentinels"]] == [None, None, None]
    assert_no_secret(res.stdout, res.stderr)


def test_acl_user_with_least_privileges_works(stack: LocalStack) -> None:
    """An ACL user limited to the controller's commands can run status and reconcile."""
    env = {"SENTINEL_HAPROXY_SENTINEL_USERNAME": ACL_USER,
           "SENTINEL_HAPROXY_SENTINEL_PASSWORD": ACL_PW}
    st = run_cli(stack, "status", "--json", env=env)
    assert st.returncode in (0, 1), st.stdout + st.stderr
    assert [v["error"] for v in json.loads(st.stdout)["sentinels"]] == [None, None, None]
    rc = run_cli(stack, "reconcile", env=env)
    assert rc.returncode == 0, rc.stdout + rc.stderr
    denied = stack.sentinel_command(0, "ACL", "LOG")
    assert denied == [], f"commands the ACL refused: {denied}"
    assert_no_secret(st.stdout, st.stderr, rc.stdout, rc.stderr)


def test_acl_user_of_an_older_runbook_still_works_and_is_warned(stack: LocalStack) -> None:
    """An ACL user allowed `sentinel|masters` but not `sentinel|master` (the runbook's rules
    before targeted reads) still works: the reader falls back to SENTINEL MASTERS and says
    which permission to add."""
    env = {"SENTINEL_HAPROXY_SENTINEL_USERNAME": OLD_ACL_USER,
           "SENTINEL_HAPROXY_SENTINEL_PASSWORD": ACL_PW}
    st = run_cli(stack, "status", "--json", env=env)
    assert st.returncode in (0, 1), st.stdout + st.stderr
    assert [v["error"] for v in json.loads(st.stdout)["sentinels"]] == [None, None, None]
    assert st.stderr.count("sentinel_master_denied") == len(stack.sentinel_addrs), st.stderr
    assert "+sentinel|master" in st.stderr
    assert_no_secret(st.stdout, st.stderr)


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["reconcile"],
                                     ["reconcile", "--json"]])
def test_wrong_password_fails_naming_authentication(stack: LocalStack, command: list[str]) -> None:
    """A wrong password: exit 3, each Sentinel's error says authentication failed, no secret shown,
    HAProxy untouched."""
    before = servers_state(stack)
    res = run_cli(stack, *command, "--sentinel-password", WRONG_PW)
    assert res.returncode == 3, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert out.count("authentication failed") >= len(stack.sentinel_addrs), out
    assert_no_secret(res.stdout, res.stderr)
    assert servers_state(stack) == before


def test_missing_password_says_authentication_required(stack: LocalStack) -> None:
    """No password at all: the error tells the operator to set the Sentinel password."""
    res = run_cli(stack, "status")
    assert res.returncode == 3
    assert "authentication required: set the sentinel password" in res.stdout, res.stdout


def test_daemon_with_wrong_password_logs_authentication_and_changes_nothing(
    stack: LocalStack, tmp_path: Path
) -> None:
    """The daemon with a wrong password logs sentinel_disconnected naming authentication for each
    Sentinel, leaves HAProxy alone and never logs the password."""
    before = servers_state(stack)
    log = tmp_path / "daemon.log"
    with controller_for(stack, log, env={"SENTINEL_HAPROXY_SENTINEL_PASSWORD": WRONG_PW}) as d:
        for a in stack.sentinel_addrs:
            ev = d.wait_event("sentinel_disconnected", sentinel=str(a))
            assert str(ev["error"]).startswith("authentication failed"), ev
        wait_until(lambda: d.events("pass"), 10, "a pass")
        assert servers_state(stack) == before
    assert d.returncode == 0, d.tail()
    assert not d.problems(), d.problems()
    assert_no_secret(d.text())


def test_daemon_with_password_file_follows_sentinel(stack: LocalStack, tmp_path: Path) -> None:
    """The daemon authenticates with a password file, applies the state, never logs the secret."""
    f = tmp_path / "pw"
    f.write_text(SENTINEL_PW)
    # Start from a state the daemon must correct.
    stack.haproxy_command("set server redis1_master/redis1a state maint")
    with controller_for(stack, tmp_path / "daemon.log",
                        extra_args=["--sentinel-password-file", str(f)]) as d:
        for a in stack.sentinel_addrs:
            d.wait_event("sentinel_connected", sentinel=str(a))
        wait_until(lambda: ready(stack, "redis1_master", "redis1a"), 20, "redis1a ready for writes")
    assert d.returncode == 0, d.tail()
    assert not d.problems(), d.problems()
    assert_no_secret(d.text())
