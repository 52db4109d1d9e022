"""TLS to Sentinel with a REAL TLS-only redis-sentinel (Debian's redis is built with TLS).

A one-group LocalStack provides Redis and HAProxy; one extra Sentinel listens only on a TLS port
(certificate from a throw-away CA made with openssl) and monitors the stack's redis1 with quorum
1. It requires client certificates (`tls-auth-clients yes`). The controller must work with
`--sentinel-tls --sentinel-tls-ca-file` plus its client certificate and key, fail naming the
certificate with a CA that did not sign the server's certificate, and fail without a client
certificate.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from itest_support import controller_for, ready, run_cli, start_stack

from lab.localstack import Layout, LocalStack, free_port
from lab.procs import REDIS_SERVER, ManagedProcess
from lab.wait import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed"),
]

TLS_HOST = "127.0.0.30"  # outside LocalStack's node (2..) and sentinel (20..22) addresses


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}", cwd=d)


@dataclass
class TLSSentinel:
    stack: LocalStack
    port: int
    ca: Path
    other_ca: Path
    client_cert: Path
    client_key: Path

    @property
    def addr(self) -> str:
        return f"{TLS_HOST}:{self.port}"

    def tls_args(self, ca: Path | None = None, client_cert: bool = True) -> list[str]:
        # The TLS Sentinel is a 4th one beside the stack's 3 plain ones (which it knows, and
        # the controller discovers but cannot read over TLS): trust its vote alone.
        args = ["--sentinel-tls", "--sentinel-tls-ca-file", str(ca or self.ca),
                "--min-sentinels", "1"]
        if client_cert:
            args += ["--sentinel-tls-cert-file", str(self.client_cert),
                     "--sentinel-tls-key-file", str(self.client_key)]
        return args

    def cli(self, *args: str, ca: Path | None = None,
            client_cert: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(self.stack, *args, *self.tls_args(ca, client_cert),
                       sentinels=[self.addr])


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSSentinel]:
    """LocalStack (redis1) + one TLS-only sentinel monitoring it, stopped by PID."""
    d = tmp_path_factory.mktemp("tls")
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "sentinel.key", "-out",
            "sentinel.csr", "-subj", f"/CN={TLS_HOST}", cwd=d)
    (d / "ext").write_text(f"subjectAltName=IP:{TLS_HOST}\n")
    openssl("x509", "-req", "-in", "sentinel.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "sentinel.crt", "-days", "2", "-extfile", "ext", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out",
            "client.csr", "-subj", "/CN=sentinel-haproxy", cwd=d)
    openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "client.crt", "-days", "2", cwd=d)
    stack = start_stack(lambda attempt: d / f"stack{attempt}",
                        lambda: Layout.for_tests(groups=("redis1",)))
    conf = d / "sentinel-tls.conf"
    proc = ManagedProcess("sentinel-tls", [REDIS_SERVER, str(conf), "--sentinel"], d,
                          d / "sentinel-tls.log")
    try:
        master = stack.nodes["redis1a"]
        port = free_port([TLS_HOST])
        conf.write_text("\n".join([
            "port 0", f"tls-port {port}", f"bind {TLS_HOST}", f"bind-source-addr {TLS_HOST}",
            f"tls-cert-file {d / 'sentinel.crt'}", f"tls-key-file {d / 'sentinel.key'}",
            f"tls-ca-cert-file {d / 'ca.crt'}", "tls-auth-clients yes", f"dir {d}",
            'logfile ""', "daemonize no",
            f"sentinel monitor redis1 {master.host} {master.port} 1",
            "sentinel down-after-milliseconds redis1 2000", "",
        ]))
        proc.start()
        client: Any = redis.Redis(host=TLS_HOST, port=port, ssl=True,
                                  ssl_ca_certs=str(d / "ca.crt"),
                                  ssl_certfile=str(d / "client.crt"),
                                  ssl_keyfile=str(d / "client.key"),
                                  decode_responses=True, socket_timeout=1,
                                  socket_connect_timeout=1)  # redis-py: partly untyped

        def knows_replica() -> bool:
            assert proc.alive(), proc.log_text()
            with contextlib.suppress(redis.RedisError):
                m = client.execute_command("SENTINEL", "MASTER", "redis1")
                fields = dict(m) if isinstance(m, dict) else dict(zip(m[::2], m[1::2], strict=True))
                return int(fields["num-slaves"]) >= 1
            return False

        wait_until(knows_replica, 30, "TLS sentinel to know redis1 and its replica")
        client.close()
        yield TLSSentinel(stack, port, d / "ca.crt", d / "other-ca.crt", d / "client.crt",
                          d / "client.key")
    finally:
        proc.stop()
        stack.stop()


def test_status_and_reconcile_over_tls(tls: TLSSentinel) -> None:
    """With the right CA the controller reads the TLS Sentinel and applies its verdict."""
    st = tls.cli("status", "--json")
    assert st.returncode in (0, 1), st.stdout + st.stderr
    report = json.loads(st.stdout)
    (mine,) = [v for v in report["sentinels"] if v["sentinel"] == tls.addr]
    assert (mine["error"], mine["problem"], mine["tilt"]) == (None, None, False)
    assert mine["myid"]
    master = tls.stack.nodes["redis1a"]
    assert report["groups"][0]["decision"]["master"] == f"{master.host}:{master.port}"
    rc = tls.cli("reconcile")
    assert rc.returncode == 0, rc.stdout + rc.stderr
    assert ready(tls.stack, "redis1_master", "redis1a")


def test_wrong_ca_is_refused_naming_the_certificate(tls: TLSSentinel) -> None:
    """A CA that did not sign the Sentinel's certificate: exit 3, the error names the
    certificate verification."""
    res = tls.cli("status", ca=tls.other_ca)
    assert res.returncode == 3, res.stdout + res.stderr
    assert "certificate verify failed" in res.stdout, res.stdout


def test_missing_client_certificate_is_refused(tls: TLSSentinel) -> None:
    """A Sentinel with tls-auth-clients yes refuses a client without a certificate: exit 3,
    and the Sentinel's error names the refused handshake and the client certificate."""
    res = tls.cli("status", "--json", client_cert=False)
    assert res.returncode == 3, res.stdout + res.stderr
    err = json.loads(res.stdout)["sentinels"][0]["error"]
    assert "TLS handshake refused" in err and "client certificate" in err, res.stdout


def test_client_certificate_needs_its_key() -> None:
    """A client certificate without its key is a settings error naming both settings."""
    res = subprocess.run(
        [sys.executable, "-m", "controller", "status", "--sentinel", "127.0.0.1:1",
         "--haproxy-socket", "/nonexistent", "--sentinel-tls",
         "--sentinel-tls-cert-file", "/x.crt"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert res.returncode == 2, res.stderr
    assert "sentinel_tls_cert_file and sentinel_tls_key_file" in res.stderr


def test_daemon_subscribes_over_tls(tls: TLSSentinel, tmp_path: Path) -> None:
    """The daemon's pub/sub connection works over TLS: connected, and a hand edit is undone."""
    # An earlier test leaves redis1a ready: take it out first, so that the daemon's own first
    # sync shows (a hand edit before that sync is no hand edit to this daemon).
    tls.stack.haproxy_command("set server redis1_master/redis1a state maint")
    # Not the stack's plain sentinels: the TLS one only.
    with controller_for(tls.stack, tmp_path / "daemon.log", extra_args=tls.tls_args(),
                        sentinels=[tls.addr]) as d:
        d.wait_event("sentinel_connected", sentinel=tls.addr)
        d.wait_event("server_state_changed", backend="redis1_master", server="redis1a",
                     to="ready")
        tls.stack.haproxy_command("set server redis1_master/redis1a state maint")
        d.wait_event("drift_corrected")
        assert ready(tls.stack, "redis1_master", "redis1a")
    assert d.returncode == 0, d.tail()
    assert not d.problems(), d.problems()
