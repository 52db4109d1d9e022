"""controller.plan: verdicts from captured Sentinel replies against captured HAProxy states.

The `haproxy_localstack_*` captures are the HAProxy of the same stack as the sentinel captures
(same addresses), read after exactly the commands a failover needs were applied by hand; the
`haproxy_admin_bits_state` capture has one server per admin state, one with a live session.
"""

from __future__ import annotations

import dataclasses

from captured import GROUP, A, B, haproxy_state, node, selecting, views

from controller.decide import History, decide
from controller.model import Address, AdminState, Decision, HAProxyState
from controller.plan import Plan, plan, targets

WRITE, READ = "{master}_master", "{master}_replicas"
INITIAL = "haproxy_localstack_initial.txt"  # every server config-disabled (admin 5)
STEADY = "haproxy_localstack_steady.txt"  # redis1a ready in write, redis1b ready in read
SWITCHED = "haproxy_localstack_switched.txt"  # redis1b ready in write, all else maint
BITS = "haproxy_admin_bits_state.txt"


def verdict(state: str) -> Decision:
    return decide(GROUP, views(state), 2)


def run(decision: Decision, actual: HAProxyState, write: str = WRITE, read: str = READ) -> Plan:
    wanted, notes = targets([decision], write, read)
    p = plan(wanted, actual)
    return Plan(p.commands, (*notes, *p.notes))


def texts(p: Plan) -> list[str]:
    return [c.text for c in p.commands]


def ready_servers(actual: HAProxyState, backend: str) -> set[str]:
    return {n for n, s in actual.backends[backend].items() if s.admin.value == "ready"}


FAILOVER = [
    "set server redis1_master/redis1a state maint",
    "shutdown sessions server redis1_master/redis1a",
    "set server redis1_master/redis1b state ready",
    "set server redis1_replicas/redis1b state maint",
]


def test_fresh_haproxy_gets_exactly_the_master_and_the_replica_ready() -> None:
    """All servers disabled at start: ready the master in write and the replica in read, only."""
    p = run(verdict("steady"), haproxy_state(INITIAL))
    assert texts(p) == [
        "set server redis1_master/redis1a state ready",
        "set server redis1_replicas/redis1b state ready",
    ]
    assert p.notes == ()
    c = p.commands[0]
    assert (c.backend, c.server, c.before, c.after) == (
        "redis1_master", "redis1a", "maint", "ready"
    )
    assert f"elected master {node(A)}" in c.reason


def test_plan_on_the_desired_state_is_empty() -> None:
    """Idempotent: HAProxy as it was after those commands needs nothing more (steady, failover)."""
    steady = haproxy_state(STEADY)
    assert ready_servers(steady, "redis1_master") == {"redis1a"}
    assert run(verdict("steady"), steady) == Plan()
    switched = haproxy_state(SWITCHED)
    assert ready_servers(switched, "redis1_master") == {"redis1b"}
    assert run(verdict("switched"), switched) == Plan()


def test_failover_takes_the_old_master_out_before_the_new_one_in() -> None:
    """After +switch-master: maint + shutdown sessions on the old master, then ready the new one;
    read backend changes come after the write backend's."""
    p = run(verdict("switched"), haproxy_state(STEADY))
    assert texts(p) == FAILOVER
    ready_at = texts(p).index("set server redis1_master/redis1b state ready")
    outs = [i for i, c in enumerate(p.commands)
            if c.after in ("maint", "sessions-closed") and c.backend == "redis1_master"]
    assert max(outs) < ready_at
    assert p.commands[1].after == "sessions-closed"


def test_leader_promotion_alone_drives_the_failover() -> None:
    """At the leader's +promoted-slave (others lagging) the plan is already the full failover."""
    assert texts(run(verdict("promoted"), haproxy_state(STEADY))) == FAILOVER


def test_write_backend_has_exactly_one_ready_server_after_every_plan() -> None:
    """Whatever HAProxy had, the planned write backend has exactly the master ready."""
    for actual in (INITIAL, STEADY, SWITCHED):
        for state, master in (("steady", "redis1a"), ("switched", "redis1b")):
            st = haproxy_state(actual)
            p = run(verdict(state), st)
            ready = ready_servers(st, "redis1_master")
            for c in p.commands:
                if c.backend == "redis1_master" and c.after == "ready":
                    ready.add(c.server)
                elif c.backend == "redis1_master" and c.after == "maint":
                    ready.discard(c.server)
            assert ready == {master}, (actual, state)


def test_read_backend_excludes_the_master() -> None:
    """The master is taken out of the read backend; the converted old master goes in."""
    p = run(verdict("converted"), haproxy_state(STEADY))
    by_text = {c.text: c for c in p.commands}
    out = by_text["set server redis1_replicas/redis1b state maint"]
    assert out.reason == f"is the master {node(B)}"
    assert "set server redis1_replicas/redis1a state ready" in by_text
    assert not any(c.backend == "redis1_replicas" and c.after == "sessions-closed"
                   for c in p.commands), "reads on a former replica are not cut"


def test_returning_old_master_stays_out_of_both_backends() -> None:
    """The old master back as master (role master, link err) is neither written nor read."""
    p = run(verdict("old_master_returned"), haproxy_state(SWITCHED))
    assert p == Plan()


def test_fenced_master_gets_no_writes_and_replica_keeps_reads() -> None:
    """An o_down master is taken out of the write backend and nothing replaces it yet."""
    p = run(verdict("master_down"), haproxy_state(STEADY))
    assert texts(p) == [
        "set server redis1_master/redis1a state maint",
        "shutdown sessions server redis1_master/redis1a",
    ]
    assert "o_down" in p.commands[0].reason
    assert p.notes == ()


def test_undecided_group_gives_no_commands_and_a_note() -> None:
    """Undecided (too few Sentinels): HAProxy keeps its state; a note says why."""
    d = decide(GROUP, views("steady"), 4)
    assert d.master is None
    p = run(d, haproxy_state(STEADY))
    assert p.commands == ()
    (note,) = p.notes
    assert (note.event, note.group) == ("undecided", GROUP)
    assert "need 4" in note.detail


def test_missing_backend_gives_a_note_per_backend() -> None:
    """Templates naming backends HAProxy does not have: a note for each, no command."""
    p = run(verdict("steady"), haproxy_state(STEADY), "{master}_write", "{master}_read")
    assert p.commands == ()
    assert [(n.event, n.backend) for n in p.notes] == [
        ("backend_missing", "redis1_write"),
        ("backend_missing", "redis1_read"),
    ]


def test_master_not_in_backend_note_and_every_server_out() -> None:
    """A master no server stands for: a note, and every write server goes to maint."""
    elsewhere = Address("127.0.0.99", node(A).port)
    d = dataclasses.replace(verdict("steady"), master=elsewhere, replicas=frozenset())
    p = run(d, haproxy_state(STEADY))
    assert [(n.event, n.backend) for n in p.notes] == [("master_not_in_backend", "redis1_master")]
    assert str(elsewhere) in p.notes[0].detail
    assert texts(p) == [
        "set server redis1_master/redis1a state maint",
        "shutdown sessions server redis1_master/redis1a",
        "set server redis1_replicas/redis1b state maint",
    ]


def bits_decision(host: str) -> Decision:
    """Group `g` of the admin-bits capture with its master at `host` on the servers' port."""
    port = haproxy_state(BITS).backends["g_master"]["n1"].port
    return Decision(name="g", master=Address(host, port), epoch=3, reason="epoch 3 from 3 of 3")


def test_maint_server_with_sessions_in_write_backend_gets_sessions_shut() -> None:
    """Already in maint but still holding a session (scur 1): only shutdown sessions is sent."""
    actual = haproxy_state(BITS)
    assert actual.backends["g_master"]["n1"].sessions == 1
    p = run(bits_decision("127.0.0.4"), actual)  # n3 is the master
    assert texts(p) == [
        "shutdown sessions server g_master/n1",
        "set server g_master/n2 state maint",  # config-disabled set ready (admin 4)
        "shutdown sessions server g_master/n2",
        "set server g_master/n4 state maint",  # drain (8)
        "shutdown sessions server g_master/n4",
        "set server g_master/n7 state maint",
        "shutdown sessions server g_master/n7",
    ]
    assert "close its 1 session(s)" in p.commands[0].reason
    assert p.notes == ()


def test_fqdn_server_matches_a_master_named_by_hostname() -> None:
    """With announce-hostnames Sentinel names `localhost`: the server defined by it is the one."""
    p = run(bits_decision("localhost"), haproxy_state(BITS))
    assert p.notes == ()
    assert not any(c.server == "n7" for c in p.commands)
    assert "set server g_master/n3 state maint" in texts(p)
    assert run(bits_decision("127.0.0.1"), haproxy_state(BITS)).notes == (), "by address too"


def twin_of_master(admin: AdminState) -> HAProxyState:
    """The steady capture with a second write server `twin` at the master's address."""
    state = haproxy_state(STEADY)
    write = state.backends["redis1_master"]
    write["twin"] = dataclasses.replace(write["redis1a"], name="twin", admin=admin)
    return state


def test_two_servers_with_the_master_address_never_both_take_writes() -> None:
    """Two write servers for one node (a config mistake): only one is ready, the one already
    ready; the other goes to maint with its sessions shut (found by
    tests/test_properties_plan.py: both were set ready)."""
    p = run(verdict("steady"), twin_of_master(AdminState.DRAIN))
    assert texts(p) == [
        "set server redis1_master/twin state maint",
        "shutdown sessions server redis1_master/twin",
    ]
    assert "redis1_master/redis1a is the master" in p.commands[0].reason
    fresh = haproxy_state(INITIAL)  # both in maint: the first one is made ready, only
    write = fresh.backends["redis1_master"]
    write["twin"] = dataclasses.replace(write["redis1a"], name="twin")
    assert [c.text for c in run(verdict("steady"), fresh).commands if c.after == "ready"] == [
        "set server redis1_master/redis1a state ready",
        "set server redis1_replicas/redis1b state ready",
    ]


def test_unresolved_server_is_never_set_ready() -> None:
    """A server without an address (`-`, RMAINT) is not made ready even if its FQDN is named."""
    p = run(bits_decision("redis-gone.invalid"), haproxy_state(BITS))
    assert not any(c.after == "ready" for c in p.commands)
    assert [n.event for n in p.notes] == ["master_not_in_backend"]


def test_read_fallback_lets_the_master_serve_reads_only_while_no_replica_is_healthy() -> None:
    """With read_fallback_to_master, the master joins the read backend only when no replica is
    healthy, and leaves it again when one is."""
    state = without_fallback_servers(haproxy_state(SWITCHED))  # a config without backups
    switched = verdict("old_master_returned")  # new master, no healthy replica
    wanted, _ = targets([switched], WRITE, READ, read_fallback=True)
    p = plan(wanted, state)
    assert texts(p) == ["set server redis1_replicas/redis1b state ready"]
    assert "fallback" in p.commands[0].reason
    healthy = verdict("converted")  # the old master is a healthy replica again
    wanted, _ = targets([healthy], WRITE, READ, read_fallback=True)
    assert texts(plan(wanted, state)) == ["set server redis1_replicas/redis1a state ready"]


def without_fallback_servers(actual: HAProxyState) -> HAProxyState:
    """`actual` without the read backend's `backup` servers (a config that has none)."""
    return HAProxyState(actual.info, {
        be: {n: s for n, s in servers.items() if not s.backup}
        for be, servers in actual.backends.items()
    })


# -- read fallback through the backend's `backup` servers ------------------------------


def with_fallback_servers(actual: HAProxyState) -> HAProxyState:
    """`actual` with the shipped config's read fallback: every node once more in the read
    backend as a `backup` server named `<node>-fallback`, config-disabled (maint)."""
    read = dict(actual.backends["redis1_replicas"])
    for name in ("redis1a", "redis1b"):
        srv = read[name]
        read[f"{name}-fallback"] = dataclasses.replace(
            srv, name=f"{name}-fallback", backup=True, admin=AdminState.MAINT, sessions=0)
    return HAProxyState(actual.info, {**actual.backends, "redis1_replicas": read})


def fallback_plan(decision: Decision, actual: HAProxyState, fallback: bool = True) -> Plan:
    wanted, _ = targets([decision], WRITE, READ, read_fallback=fallback)
    return plan(wanted, actual)


def test_master_is_armed_as_backup_reader_while_replicas_serve() -> None:
    """Steady: the replica serves reads and the master's backup entry is ready too, so that
    HAProxy falls back to it by itself the moment the replica is down."""
    actual = with_fallback_servers(haproxy_state(STEADY))
    p = fallback_plan(verdict("steady"), actual)
    assert texts(p) == ["set server redis1_replicas/redis1a-fallback state ready"]
    assert "read fallback" in p.commands[0].reason


def test_o_down_master_is_disarmed_as_reader_and_the_replica_keeps_serving() -> None:
    """Master o_down: its backup entry goes maint; the replica that served keeps serving."""
    actual = with_fallback_servers(haproxy_state(STEADY))
    armed = dataclasses.replace(actual.backends["redis1_replicas"]["redis1a-fallback"],
                                admin=AdminState.READY)
    actual.backends["redis1_replicas"]["redis1a-fallback"] = armed
    d = decide(GROUP, views("master_down"), 2, History(readers=frozenset({node(B)})))
    p = fallback_plan(d, actual)
    assert "set server redis1_replicas/redis1a-fallback state maint" in texts(p)
    assert not any("redis1_replicas/redis1b " in t for t in texts(p))


def test_new_master_with_no_replica_reads_through_its_backup_entry() -> None:
    """After a 2-node failover the new master serves reads through its backup entry, not as a
    replica; the old master's entries stay out."""
    actual = with_fallback_servers(haproxy_state(STEADY))
    p = fallback_plan(verdict("old_master_returned"), actual)
    assert "set server redis1_replicas/redis1b-fallback state ready" in texts(p)
    assert "set server redis1_replicas/redis1b state maint" in texts(p)
    assert not any(t.endswith("redis1a state ready") or "redis1a-fallback state ready" in t
                   for t in texts(p))


def test_promoted_replica_keeps_its_read_server_through_the_promotion() -> None:
    """A 2-node failover where the promoted replica served reads: its read server stays ready
    (no read change while clients reconnect after Sentinel closed their connections), only
    the write backend and its backup entry change."""
    actual = with_fallback_servers(haproxy_state(STEADY))
    d = decide(GROUP, selecting(), 2, History(readers=frozenset({node(B)}), promoted=node(B)))
    assert d.early
    p = fallback_plan(d, actual)
    assert not any("redis1_replicas/redis1b " in t for t in texts(p))
    assert "set server redis1_master/redis1b state ready" in texts(p)
    reasons = {c.server: c.reason for c in plan(targets([d], WRITE, READ, True)[0],
                                                 haproxy_state(INITIAL)).commands
               if c.backend == "redis1_replicas" and c.after == "ready"}
    assert "through its promotion" in reasons["redis1b"]


def test_fallback_off_keeps_every_backup_entry_out() -> None:
    """With the read fallback off no backup entry is ever ready."""
    actual = with_fallback_servers(haproxy_state(STEADY))
    assert texts(fallback_plan(verdict("steady"), actual, fallback=False)) == []
    p = fallback_plan(verdict("old_master_returned"), actual, fallback=False)
    assert not any("fallback state ready" in t for t in texts(p))
