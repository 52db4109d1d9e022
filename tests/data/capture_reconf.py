"""Regenerate tests/data/sentinel_reconf*.json: a 3-node group between `+promoted-slave` and the
end of the failover, when the leader points the other replica at the new master.

Runs a one-group LocalStack with two replicas (redis1a master, redis1b and redis1c replicas, 3
sentinels), SIGKILLs the master and polls every Sentinel every 2 ms as capture_sentinel.py does
(same commands, same file format), saving:

    reconf         first snapshot where the leader's GET-MASTER-ADDR-BY-NAME names the promoted
                   replica (failover-state reconf_slaves) while its SENTINEL REPLICAS still lists
                   the other replica replicating from the old master (no reconf flag yet)
    reconf_sent    first snapshot where the leader flags the other replica `reconf_sent` (it has
                   sent that replica `SLAVEOF <new master>`, whose `CLIENT KILL` closes its
                   connections)

Usage: .venv/bin/python tests/data/capture_reconf.py  (~30 s; stops all it starts)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from capture_sentinel import (  # a script beside this one (tests/data is on the path)
    GROUP,
    POLL_S,
    Capture,
    EventTap,
    Snapshot,
    addr_of,
    healthy,
    master_entry,
    replica,
)

from lab.localstack import Layout, LocalStack


def main() -> int:
    layout = Layout.for_tests(groups=(GROUP,), replicas=2)
    with tempfile.TemporaryDirectory(prefix="capture-") as tmp, LocalStack(
        Path(tmp), layout
    ) as stack, EventTap(stack) as tap:
        cap = Capture(stack, None, tap.t0)
        a = stack.nodes[GROUP + "a"]
        a_addr = f"{a.host}:{a.port}"
        replicas = [f"{n.host}:{n.port}" for n in (stack.nodes[GROUP + "b"],
                                                   stack.nodes[GROUP + "c"])]
        print(f"stack up: master {a_addr}, replicas {replicas}, sentinels {cap.names}")
        cap.wait("steady: both replicas linked on every sentinel", lambda s: all(
            addr_of(v) == a_addr and all(healthy(replica(v, r), a_addr) for r in replicas)
            for v in s.values()), 30)

        stack.kill_node(a.name)

        def leader_of(s: Snapshot) -> str | None:
            return next((n for n, v in s.items()
                         if master_entry(v).get("failover-state") == "reconf_slaves"
                         and addr_of(v) != a_addr), None)

        def reconf(s: Snapshot) -> bool:
            n = leader_of(s)
            if n is None:
                return False
            other = next(r for r in replicas if r != addr_of(s[n]))
            f = replica(s[n], other) or {}
            return (f"{f.get('master-host')}:{f.get('master-port')}" == a_addr
                    and "reconf" not in f.get("flags", ""))

        s = cap.wait("leader in reconf_slaves, the other replica not reconfigured", reconf, 40)
        leader = leader_of(s)
        assert leader is not None
        new = addr_of(s[leader])
        other = next(r for r in replicas if r != new)
        cap.save("reconf", f"3-node group, master {a_addr} SIGKILLed. Leader {leader} after its "
                 f"+promoted-slave: GET-MASTER-ADDR-BY-NAME names {new}, failover-state "
                 f"reconf_slaves, its SENTINEL REPLICAS lists {other} still replicating from "
                 f"{a_addr} with no reconf flag (SLAVEOF not sent yet). Polled every "
                 f"{POLL_S * 1000:g} ms.", s, leader=leader)

        def sent(s: Snapshot) -> bool:
            return "reconf_sent" in (replica(s[leader], other) or {}).get("flags", "")

        s = cap.wait("the other replica flagged reconf_sent", sent, 20)
        cap.save("reconf_sent", f"The same failover: leader {leader} flags {other} reconf_sent "
                 f"(it sent SLAVEOF {new}, whose CLIENT KILL closed the replica's connections); "
                 f"GET-MASTER-ADDR-BY-NAME {new}. Polled every {POLL_S * 1000:g} ms.", s,
                 leader=leader)
    return 0


if __name__ == "__main__":
    sys.exit(main())
