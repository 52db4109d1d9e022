"""controller.redis_nodes.RedisNodes: what a connection sends (a recording listener), against
a node that accepts connections and never answers (a node whose replies are dropped: the
adapter's own timeout and quiet period), and against real nodes."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import hiredis
import pytest

from controller.model import Address
from controller.redis_nodes import NodeError, NodeQuiet, RedisNodes, Role
from controller.sentinel import Auth
from lab.localstack import LocalStack
from lab.wait import wait_until


@pytest.fixture
def silent_node() -> Iterator[tuple[Address, list[socket.socket]]]:
    """A listener on loopback that accepts every connection and never writes a byte."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            accepted.append(conn)

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield Address("127.0.0.1", srv.getsockname()[1]), accepted
    stop.set()
    t.join(2)
    for c in accepted:
        c.close()
    srv.close()


def test_a_connection_to_a_node_is_named_and_asks_nothing_else() -> None:
    """A (re)connect sends `CLIENT SETNAME` and then ROLE, nothing more: not redis-py's two
    `CLIENT SETINFO` round trips (Redis 7.0 refuses them anyway), which a reconnect to the
    replica being promoted, right after Sentinel's `CLIENT KILL`, would wait for."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(5.0)  # bounded: the test fails, it does not hang
    seen: list[list[str]] = []

    def serve() -> None:
        conn, _ = srv.accept()
        conn.settimeout(5.0)
        reader = hiredis.Reader(encoding="utf-8")
        with conn:
            while (data := conn.recv(65536)):
                reader.feed(data)
                while (cmd := reader.gets()) is not False:
                    seen.append(cmd)
                    conn.sendall(b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n" if cmd[0] == "ROLE"
                                 else b"+OK\r\n")

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    addr = Address("127.0.0.1", srv.getsockname()[1])
    nodes = RedisNodes(Auth(), timeout_s=2.0)
    try:
        assert nodes.roles([addr]) == {addr: Role("master")}
    finally:
        nodes.close()
        t.join(2)
        srv.close()
    assert seen == [["CLIENT", "SETNAME", "sentinel-haproxy"], ["ROLE"]]


def test_a_node_that_timed_out_is_not_asked_again_at_once(
    silent_node: tuple[Address, list[socket.socket]],
) -> None:
    """The first ROLE times out (NodeError naming the node); the next one within the quiet
    period fails at once, without a new connection: the loop that polls ROLE every few ms
    is not held for the whole timeout each time."""
    addr, accepted = silent_node
    nodes = RedisNodes(Auth(), timeout_s=0.05)

    def role() -> Role:
        answer = nodes.roles([addr])[addr]
        if isinstance(answer, NodeError):
            raise answer
        return answer

    with pytest.raises(NodeError, match=str(addr)):
        role()
    wait_until(lambda: len(accepted) == 1, 2, "the listener to accept the connection")
    with pytest.raises(NodeQuiet, match="not asked again yet"):
        role()
    assert len(accepted) == 1
    nodes.forget(set())  # a node no longer watched: its quiet period goes with it
    with pytest.raises(NodeError, match="Timeout"):
        role()
    nodes.close()


@pytest.mark.integration
def test_roles_asks_real_nodes_at_once_and_survives_the_promotion_client_kill(
    stack: LocalStack,
) -> None:
    """`roles` answers each real node's ROLE in one sweep (the replica linked to the master);
    after `CLIENT KILL TYPE normal`
    (what Sentinel sends with `REPLICAOF NO ONE`) the kept connections are replaced and the
    next sweep answers again; a SIGSTOPped node is a NodeError naming it while the other
    node's answer still comes back."""
    a, b = stack.layout.nodes()["redis1a"].addr, stack.layout.nodes()["redis1b"].addr
    nodes = RedisNodes(Auth(), timeout_s=0.2)
    try:
        first = nodes.roles([a, b, a])
        assert list(first) == [a, b] and first[a] == Role("master")
        wait_until(lambda: nodes.roles([b])[b] == Role("slave", a), 10,
                   "the replica to say it is linked to the master")
        for name in ("redis1a", "redis1b"):
            stack.redis_command(name, "CLIENT", "KILL", "TYPE", "normal")
        kinds = {k: r.kind for k, r in nodes.roles([a, b]).items() if isinstance(r, Role)}
        assert kinds == {a: "master", b: "slave"}
        stack.pause_node("redis1b")
        try:
            got = nodes.roles([a, b])
        finally:
            stack.resume_node("redis1b")
        assert got[a] == Role("master")
        assert isinstance(got[b], NodeError) and str(b) in str(got[b])
    finally:
        nodes.close()


@pytest.mark.integration
def test_nodes_that_stop_answering_cost_one_timeout_together(stack: LocalStack) -> None:
    """Both nodes SIGSTOPped after a sweep that connected to them: the next sweep's answers
    share one deadline, so it waits one timeout for the two of them (not one each) and names
    each node in its error."""
    a, b = stack.layout.nodes()["redis1a"].addr, stack.layout.nodes()["redis1b"].addr
    timeout_s = 1.0
    nodes = RedisNodes(Auth(), timeout_s=timeout_s)
    try:
        assert all(isinstance(r, Role) for r in nodes.roles([a, b]).values())
        stack.pause_node("redis1a")
        stack.pause_node("redis1b")
        try:
            started = time.monotonic()
            got = nodes.roles([a, b])
            took = time.monotonic() - started
        finally:
            stack.resume_node("redis1a")
            stack.resume_node("redis1b")
        for addr in (a, b):
            answer = got[addr]
            assert isinstance(answer, NodeError) and str(addr) in str(answer), answer
        assert took < 1.8 * timeout_s, f"{took:.2f} s: one timeout per node"
    finally:
        nodes.close()
