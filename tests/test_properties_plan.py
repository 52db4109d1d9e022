"""Property-based tests of controller.plan on random decisions and HAProxy states.

States hold random servers (addresses from a small pool, so duplicates are frequent;
unresolved `-` addresses; FQDNs; every admin state; sessions; backup flags; missing
backends) or a captured state. The planned commands are applied with HAProxy's semantics
(tests/fakes.FakeHAProxy); afterwards a decided group's write backend has at most one ready
server, the elected master, none when fenced, and no session on any other server.
"""

from __future__ import annotations

from captured import GROUP, A, B, node
from fakes import FakeHAProxy
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    BACKEND_TEMPLATES,
    HISTORIES,
    RULES,
    copy_state,
    decisions,
    fuzz,
    haproxy_states,
    view_lists,
)

from controller.decide import decide
from controller.model import Address, AdminState, Command, Decision, HAProxyState
from controller.plan import plan, targets

GROUPS = (GROUP, "g2")
FEW = st.sampled_from([node(A), node(B), Address("10.9.9.9", 6379)])  # servers often collide
WRITE, READ = BACKEND_TEMPLATES

Inputs = tuple[list[Decision], HAProxyState, bool]


@st.composite
def decided(draw: st.DrawFn, name: str) -> Decision:
    """A verdict of `decide` on random views, as the loop would plan from."""
    vs = draw(view_lists((name,)))
    return decide(name, vs, draw(st.integers(1, len(vs))), draw(HISTORIES), draw(RULES))


@st.composite
def plan_inputs(draw: st.DrawFn) -> Inputs:
    """One or two groups' decisions and a state: random decisions naming addresses the
    state's servers have (so that a master's server and its duplicates are common), or
    verdicts of `decide` on random views."""
    groups = GROUPS[: draw(st.integers(1, 2))]
    state = draw(STATES[groups])
    present = sorted({Address(s.addr, s.port) for servers in state.backends.values()
                      for s in servers.values() if s.addr != "-" and 0 < s.port < 65536})
    addrs = st.sampled_from(present) | FEW if present else FEW
    ds = [draw(decisions(g, addrs) | DECIDED[g]) for g in groups]
    return ds, state, draw(st.booleans())


DECIDED = {g: decided(g) for g in GROUPS}
STATES = {GROUPS[:n]: haproxy_states(GROUPS[:n], FEW) for n in (1, 2)}


def apply(commands: tuple[Command, ...], state: HAProxyState) -> HAProxyState:
    """`state` after `commands`, run with HAProxy's semantics."""
    h = FakeHAProxy()
    h.state_ = copy_state(state)
    results = h.run(commands)
    assert all(r.ok for r in results), [r.output for r in results if not r.ok]
    return h.state()


@fuzz(250)
@given(plan_inputs())
def test_after_the_plan_a_write_backend_routes_only_to_the_elected_master(args: Inputs) -> None:
    """After the planned commands, each decided write backend has at most one ready server,
    which is the elected master (exactly one when a server has its address), none when
    fenced, and no session left on any other server."""
    ds, state, fallback = args
    wanted, _ = targets(ds, WRITE, READ, fallback)
    after = apply(plan(wanted, state).commands, state)
    for d in ds:
        servers = after.backends.get(WRITE.format(master=d.name))
        if d.master is None or servers is None:
            continue
        ready = [s for s in servers.values() if s.admin is AdminState.READY]
        assert len(ready) <= 1, f"two writers: {ready}"
        if d.fenced:
            assert not ready, f"fenced, yet {ready} takes writes"
            continue
        assert all(s.matches(d.master) and s.addr != "-" for s in ready), (d.master, ready)
        if any(s.matches(d.master) and s.addr != "-" for s in servers.values()):
            assert len(ready) == 1, "the master has a server, yet none takes writes"
        others = [s for s in servers.values() if s not in ready]
        assert all(s.sessions == 0 for s in others), f"sessions left on {others}"


@fuzz(150)
@given(plan_inputs())
def test_plan_orders_write_outs_first_and_never_readies_an_unresolved_server(
    args: Inputs,
) -> None:
    """Every write backend's maint/shutdown comes before any write backend's ready, no
    server whose address is `-` is set ready, and undecided groups get no command."""
    ds, state, fallback = args
    wanted, _ = targets(ds, WRITE, READ, fallback)
    commands = plan(wanted, state).commands
    writes = {WRITE.format(master=d.name) for d in ds}
    kinds = ["in" if c.after == "ready" else "out" for c in commands if c.backend in writes]
    assert kinds == sorted(kinds, key=lambda k: k == "in"), kinds
    for c in commands:
        if c.after == "ready":
            assert state.backends[c.backend][c.server].addr != "-", c
    untouched = {tpl.format(master=d.name) for d in ds if d.master is None
                 for tpl in (WRITE, READ)}
    assert not [c for c in commands if c.backend in untouched]


@fuzz(150)
@given(plan_inputs())
def test_plan_converges_in_one_pass_and_reads_go_to_replicas_or_the_fallback(
    args: Inputs,
) -> None:
    """Planning again on the state the commands left gives nothing to do, and each decided
    read backend's ready servers are its replicas or its read fallback."""
    ds, state, fallback = args
    wanted, _ = targets(ds, WRITE, READ, fallback)
    after = apply(plan(wanted, state).commands, state)
    assert plan(wanted, after).commands == ()
    for d in ds:
        servers = after.backends.get(READ.format(master=d.name))
        if d.master is None or servers is None:
            continue
        allowed = set(d.replicas) | ({d.fallback} if fallback and d.fallback else set())
        for s in servers.values():
            if s.admin is AdminState.READY:
                assert s.addr != "-" and any(s.matches(a) for a in allowed), (s, allowed)
