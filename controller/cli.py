"""Command line: `run` (the daemon), `status`, `reconcile`, `config` (a generated haproxy.cfg);
`demo` and `drill` are handed on.

Parses flags into Settings (defaults < file < env < flags), wires adapters to the loop and
prints human or JSON output. Exit codes: 0 fine, 1 drift or failed commands, 2 bad usage or
settings, 3 undecided or unreachable. Must not contain reconcile logic, and must not import
the lab (`lab/`: local stacks, demo, drills): its commands are only named here, and the lab
is imported when one of them runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from controller import __version__, haproxy_config, logs
from controller.haproxy import HAProxyClient, HAProxyMaster
from controller.loop import Controller, PassResult
from controller.model import Address, Decision, HAProxyState, SentinelView
from controller.plan import BackendTarget, targets
from controller.redis_nodes import RedisNodes
from controller.resolver import FAMILIES, Resolver
from controller.roster import Roster
from controller.sentinel import Auth, EventWatcher, HintQueue, SentinelReader
from controller.settings import Settings, SettingsError, load, require_targets

EXIT_OK, EXIT_DRIFT, EXIT_USAGE, EXIT_UNDECIDED = 0, 1, 2, 3

log = structlog.get_logger("controller")


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("targets (each also SENTINEL_HAPROXY_<NAME> and config-file key)")
    g.add_argument("--config", dest="config_file", metavar="FILE",
                   help="TOML settings file (env SENTINEL_HAPROXY_CONFIG)")
    g.add_argument("--sentinel", dest="sentinels", action="append", metavar="HOST:PORT",
                   help="a Sentinel; repeat or comma-separate (key: sentinels)")
    g.add_argument("--haproxy-socket", dest="haproxy_sockets", action="append",
                   metavar="PATH|tcp:HOST:PORT",
                   help="HAProxy admin socket; repeat for several HAProxy (key: haproxy_sockets)")
    g.add_argument("--master", dest="masters", action="append", metavar="NAME",
                   help="master group to manage; repeat; default: all (key: masters)")
    g.add_argument("--write-backend", metavar="TEMPLATE", help="default {master}_master")
    g.add_argument("--read-backend", metavar="TEMPLATE", help="default {master}_replicas")
    g.add_argument("--sentinel-username", metavar="USER")
    g.add_argument("--sentinel-password", metavar="PASSWORD",
                   help="prefer SENTINEL_HAPROXY_SENTINEL_PASSWORD or --sentinel-password-file")
    g.add_argument("--sentinel-password-file", metavar="FILE")
    g.add_argument("--sentinel-tls", action="store_const", const=True, default=None)
    g.add_argument("--sentinel-tls-ca-file", metavar="FILE")
    g.add_argument("--sentinel-tls-cert-file", metavar="FILE",
                   help="client certificate, for Sentinels with tls-auth-clients yes")
    g.add_argument("--sentinel-tls-key-file", metavar="FILE")
    r = p.add_argument_group("redis nodes (ROLE of the replica being promoted)")
    r.add_argument("--redis-username", metavar="USER")
    r.add_argument("--redis-password", metavar="PASSWORD",
                   help="prefer SENTINEL_HAPROXY_REDIS_PASSWORD or --redis-password-file")
    r.add_argument("--redis-password-file", metavar="FILE")
    r.add_argument("--redis-tls", action="store_const", const=True, default=None)
    r.add_argument("--redis-tls-ca-file", metavar="FILE")
    r.add_argument("--redis-tls-cert-file", metavar="FILE")
    r.add_argument("--redis-tls-key-file", metavar="FILE")
    pol = p.add_argument_group("policy")
    pol.add_argument("--early-promotion", action=argparse.BooleanOptionalAction, default=None,
                     help="writes go to the replica the failover leader promotes as soon as it "
                     "answers ROLE master (default); --no-early-promotion waits for Sentinel's "
                     "+promoted-slave")
    pol.add_argument("--read-fallback-to-master", action=argparse.BooleanOptionalAction,
                     default=None,
                     help="the master serves the read port while no replica can (default on)")
    pol.add_argument("--write-lease", action=argparse.BooleanOptionalAction, default=None,
                     help="HAProxy refuses new write connections once the controller has not "
                     "heard from a majority of Sentinels for write_lease_ttl_s (default on)")
    pol.add_argument("--write-lease-ttl-s", type=float, metavar="S",
                     help="lease TTL; 0: half the groups' shortest down-after-milliseconds, at "
                     "least 1 s (default 0)")
    pol.add_argument("--write-lease-map", metavar="FILE",
                     help="the HAProxy map that holds the lease, by file name or path "
                     "(lease.map)")
    pol.add_argument("--haproxy-state-file", metavar="NAME|PATH",
                     help="HAProxy's server-state file, rewritten after every change so that a "
                     "restarted or reloaded HAProxy starts from it: a name, beside each unix "
                     "socket, or one absolute path; '' none (server-state)")
    pol.add_argument("--haproxy-master-socket", metavar="NAME|PATH|tcp:HOST:PORT",
                     help="HAProxy's master CLI (haproxy -W -S PATH), through which a fence also "
                     "shuts the sessions a reload's old worker keeps: a name, beside each unix "
                     "socket, one absolute path or tcp:HOST:PORT; '' none (master.sock)")
    pol.add_argument("--max-replica-link-down-s", type=float, metavar="S",
                     help="a replica whose link to its master is down keeps serving reads this "
                     "long (60)")
    g.add_argument("--min-sentinels", type=int, metavar="N",
                   help="Sentinels that must answer to act; default a majority")
    g.add_argument("--allow-remote-haproxy", action="store_const", const=True, default=None,
                   help="allow a tcp: HAProxy socket that is not on loopback")
    t = p.add_argument_group("timing")
    t.add_argument("--resync-interval-s", type=float, metavar="S", help="full pass period (5)")
    t.add_argument("--haproxy-poll-interval-s", type=float, metavar="S",
                   help="HAProxy restart detection period (0.5)")
    t.add_argument("--haproxy-timeout-s", type=float, metavar="S")
    t.add_argument("--sentinel-timeout-s", type=float, metavar="S")
    t.add_argument("--sentinel-ping-interval-s", type=float, metavar="S")
    t.add_argument("--sentinel-dead-after-s", type=float, metavar="S")
    t.add_argument("--promotion-poll-interval-s", type=float, metavar="S",
                   help="how often the replica being promoted is asked ROLE (0.001)")
    tp = p.add_argument_group("topology: slots, names, re-checks")
    tp.add_argument("--slot-prefix", metavar="NAME",
                    help="servers NAME<n> and NAME-fallback<n> are slots (slot)")
    tp.add_argument("--resolve-family", choices=FAMILIES,
                    help="addresses a hostname may resolve to, in order of preference (any)")
    tp.add_argument("--resolver-hosts-file", metavar="FILE",
                    help="hosts-format file asked before DNS for node names")
    tp.add_argument("--resolve-cache-s", type=float, metavar="S", help="(1)")
    tp.add_argument("--resolve-timeout-s", type=float, metavar="S", help="(1)")
    tp.add_argument("--resolve-interval-s", type=float, metavar="S",
                    help="names in use are re-resolved this often (1)")
    tp.add_argument("--replica-absent-grace-s", type=float, metavar="S",
                    help="a serving replica no Sentinel lists (SENTINEL RESET) keeps serving "
                    "this long while it says it replicates (20)")
    tp.add_argument("--recheck-interval-s", type=float, metavar="S",
                    help="after +slave: a pass this often... (0.1)")
    tp.add_argument("--recheck-window-s", type=float, metavar="S", help="...for this long (2)")
    g = p.add_argument_group("generated config (`config`; the settings file may pin them)")
    g.add_argument("--slots-per-backend", type=int, metavar="N",
                   help="server slots per backend: one per node of the group, plus room (8)")
    g.add_argument("--fallback-slots", type=int, metavar="N",
                   help="backup slots per read backend, for the read fallback (2)")
    g.add_argument("--first-frontend-port", type=int, metavar="PORT",
                   help="first group's write port; read = +1, next group +2 (5000)")
    g.add_argument("--stats-port", type=int, metavar="PORT", help="stats page; 0: none (9000)")
    g.add_argument("--bind-address", metavar="ADDR", help="frontends bind it (default: all)")
    g.add_argument("--admin-socket", metavar="PATH",
                   help="the stats socket line (/var/run/haproxy/admin.sock)")
    g.add_argument("--group-ports", action="append", metavar="GROUP=WRITE:READ",
                   help="pin a group's ports; repeat")
    g.add_argument("--group-slots", action="append", metavar="GROUP=N",
                   help="slots for one group's backends; repeat")
    o = p.add_argument_group("output")
    o.add_argument("--log-format", choices=["auto", "json", "console"])
    o.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sentinel-haproxy",
        description="Make HAProxy follow Redis Sentinel: one write server, healthy readers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="the daemon: follow Sentinel events, reconcile for ever")
    _add_common(run)
    run.add_argument("--dry-run", action="store_const", const=True, default=None,
                     help="log the commands, change nothing")
    run.add_argument("--metrics-address", metavar="HOST:PORT",
                     help="serve /metrics and /healthz (off by default)")
    run.add_argument("--webhook-url", dest="webhook_urls", action="append", metavar="URL")
    run.add_argument("--webhook-timeout-s", type=float, metavar="S", help="per POST (2)")
    run.add_argument("--unhealthy-after-s", type=float, metavar="S",
                     help="/healthz 503 when commands are refused or a group is undecided "
                     "this long (30)")
    st = sub.add_parser("status", help="each Sentinel's view beside HAProxy's, and the drift")
    _add_common(st)
    st.add_argument("--json", action="store_true", help="machine-readable output")
    rc = sub.add_parser("reconcile", help="one pass: print the commands and apply them")
    _add_common(rc)
    rc.add_argument("--dry-run", action="store_const", const=True, default=None,
                    help="print the commands only")
    rc.add_argument("--json", action="store_true")
    cf = sub.add_parser("config", help="print a complete, slot-based haproxy.cfg for every "
                        "group the Sentinels monitor (or the --master groups)")
    _add_common(cf)
    g = cf.add_argument_group("output of config")
    g.add_argument("--sections-only", action="store_true",
                   help="only the frontend/backend sections: the lines to add to a config")
    g.add_argument("--output", "-o", metavar="FILE", help="write there instead of stdout")
    for name, text in LAB_COMMANDS.items():
        sub.add_parser(name, help=text)  # never parsed here: main() hands the lab its argv
    return parser


#: Commands of the lab (`lab.cli`), named here so that `--help` lists them; the lab itself is
#: imported only when one of them runs.
LAB_COMMANDS = {
    "demo": "start the reference layout locally and run a live failover",
    "drill": "measured failover against a running stack (writes, reads, events, lost writes)",
}


_NOT_SETTINGS = {"command", "config_file", "json", "sections_only", "output"}


def settings_from(args: argparse.Namespace) -> Settings:
    flags = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS and v is not None}
    return load(flags, config_file=args.config_file)


def wire(s: Settings) -> tuple[SentinelReader, list[HAProxyClient], Auth]:
    require_targets(s)
    try:
        addrs = [Address.parse(x, "sentinel address") for x in s.sentinels]
        haproxies = [HAProxyClient(t, s.haproxy_timeout_s) for t in s.haproxy_sockets]
    except ValueError as e:
        raise SettingsError(str(e)) from None
    auth = Auth(s.sentinel_username or None, s.password(), s.sentinel_tls,
                s.sentinel_tls_ca_file or None, s.sentinel_tls_cert_file or None,
                s.sentinel_tls_key_file or None)
    reader = SentinelReader(addrs, auth, s.masters, s.sentinel_timeout_s)
    return reader, haproxies, auth


def masters_for(s: Settings, haproxies: list[HAProxyClient]) -> list[HAProxyMaster | None]:
    """The master CLI of each HAProxy (`haproxy_master_socket`), where one is set; none when
    nothing is applied (dry run)."""
    return [None if s.dry_run or (m := s.master_socket_for(h.target)) is None
            else HAProxyMaster(m, s.haproxy_timeout_s) for h in haproxies]


def roster_for(s: Settings, nodes: RedisNodes | None = None) -> Roster:
    """Names resolved, partial replica lists filled in, re-check passes (controller.roster)."""
    resolver = Resolver(s.resolve_cache_s, s.resolve_timeout_s, s.resolve_family,
                        s.resolver_hosts_file)
    return Roster(resolver, nodes, s.replica_absent_grace_s, s.recheck_interval_s,
                  s.recheck_window_s, s.resolve_interval_s)


def cmd_run(s: Settings) -> int:
    # Watcher threads hand hints to the loop under the GIL; the default 5 ms switch interval
    # showed up as the tail of event -> applied (bench/RESULTS.md). A process-wide setting,
    # so it belongs to the daemon's entry point.
    sys.setswitchinterval(0.0005)
    reader, haproxies, auth = wire(s)
    hints = HintQueue()
    on_change = None
    notifier = None
    if s.webhook_urls:
        from controller.webhooks import WebhookNotifier

        notifier = WebhookNotifier(s.webhook_urls, s.webhook_timeout_s)
        notifier.start()
        on_change = notifier.notify
    nodes = None
    redis_auth = Auth(s.redis_username or None, s.redis_secret(), s.redis_tls,
                      s.redis_tls_ca_file or None, s.redis_tls_cert_file or None,
                      s.redis_tls_key_file or None)
    if s.early_promotion:
        nodes = RedisNodes(redis_auth)
    probe = RedisNodes(redis_auth)  # ROLE of replicas the Sentinels forgot (roster)
    roster = roster_for(s, probe)

    def new_watcher(addr: Address) -> EventWatcher:
        return EventWatcher(addr, auth, hints.put, s.sentinel_ping_interval_s,
                            s.sentinel_dead_after_s, s.sentinel_timeout_s)

    watchers = [new_watcher(a) for a in reader.sentinels]
    ctl = Controller(s, reader, haproxies, watchers, hints, on_change, nodes, new_watcher,
                     roster, masters_for(s, haproxies))
    stop = threading.Event()

    received: list[str] = []

    def _stop(signum: int, _frame: object) -> None:
        # A handler runs between two bytecodes of the main thread, which may hold the log's
        # write lock or the Event's lock at that moment: logging or `stop.set()` here could
        # deadlock (seen: a SIGTERM during a burst of log lines hung the daemon). So the
        # handler only records the signal and sets the Event from another thread.
        received.append(signal.Signals(signum).name)
        threading.Thread(target=stop.set, name="stop", daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server = None
    if s.metrics_address:
        from controller.metrics import serve

        server = serve(s.metrics_address, ctl, notifier)
    log.info("starting", version=__version__, sentinels=list(s.sentinels),
             haproxy=list(s.haproxy_sockets), masters=list(s.masters) or "all",
             dry_run=s.dry_run, resync_interval_s=s.resync_interval_s,
             early_promotion=s.early_promotion, read_fallback_to_master=s.read_fallback_to_master)
    # Modules, classes and the wiring live as long as the process: out of the cyclic GC's
    # reach, a full collection scans only what the passes keep (at 1,000 groups a gen-2
    # collection held every thread ~25 ms; bench/RESULTS.md).
    gc.freeze()
    try:
        ctl.run(stop)
        log.info("stopping", signal=received[0] if received else None)
    finally:
        if server is not None:
            server.shutdown()
        if notifier is not None:
            notifier.stop()
        if nodes is not None:
            nodes.close()
        probe.close()
        roster.resolver.close()
        reader.close()
    log.info("stopped")
    return EXIT_OK


def _view_json(v: SentinelView, name: str) -> dict[str, Any]:
    out: dict[str, Any] = {"sentinel": v.sentinel, "myid": v.myid or None, "error": v.error,
                           "problem": v.problem or None, "tilt": v.tilt}
    m = v.masters.get(name)
    if m is not None:
        out.update(
            master=str(m.addr), epoch=m.epoch, flags=sorted(m.flags),
            replicas=[
                {"addr": str(r.addr), "flags": sorted(r.flags), "role": r.role_reported,
                 "link_ok": r.link_ok, "master": str(r.master_addr) if r.master_addr else None,
                 "healthy": r.healthy_for(m.addr)}
                for r in m.replicas
            ],
        )
    elif v.error is None:
        out["error"] = (f"bad reply for {name}: {v.group_errors[name]}" if name in v.group_errors
                        else f"does not monitor {name}")
    return out


def _servers_json(
    t: BackendTarget | None, backend: str, state: HAProxyState
) -> list[dict[str, Any]] | None:
    servers = state.backends.get(backend)
    if servers is None:
        return None
    out = []
    for srv in servers.values():
        want, why = t.wants_ready(srv, servers.values()) if t else (None, "undecided: left as is")
        out.append({"server": srv.name, "addr": f"{srv.addr}:{srv.port}",
                    "state": srv.admin.value, "sessions": srv.sessions,
                    "want": None if want is None else ("ready" if want else "maint"),
                    "why": why})
    return out


def status_report(s: Settings, result: PassResult) -> dict[str, Any]:
    wanted, _ = targets(result.decisions, s.write_backend, s.read_backend,
                        s.read_fallback_to_master, s.slot_prefix)
    by_backend = {t.backend: t for t in wanted}
    groups = []
    for d in result.decisions:
        backends = [s.write_backend.format(master=d.name), s.read_backend.format(master=d.name)]
        hx = []
        for o in result.haproxies:
            entry: dict[str, Any] = {"haproxy": o.target, "error": o.error or None}
            if o.state is not None:
                entry["backends"] = {
                    b: _servers_json(by_backend.get(b), b, o.state) for b in backends
                }
            entry["drift"] = [
                {"command": c.text, "reason": c.reason}
                for c in o.plan.commands if c.backend in backends
            ]
            entry["config_problems"] = [
                {"problem": n.event, "detail": n.detail}
                for n in o.plan.notes if n.group == d.name
            ]
            hx.append(entry)
        groups.append({
            "group": d.name,
            "decision": _decision_json(d),
            "sentinels": [_view_json(v, d.name) for v in result.views],
            "haproxy": hx,
        })
    sentinels = [{"sentinel": v.sentinel, "myid": v.myid or None, "error": v.error,
                  "problem": v.problem or None, "tilt": v.tilt} for v in result.views]
    return {"groups": groups, "sentinels": sentinels}


def _decision_json(d: Decision) -> dict[str, Any]:
    return {"master": str(d.master) if d.master else None, "epoch": d.epoch,
            "replicas": sorted(str(r) for r in d.replicas),
            "paused": sorted(str(r) for r in d.paused), "fenced": d.fenced,
            "nodes": sorted(str(n) for n in d.nodes),
            "reason": d.reason, "voters": d.voters}


def _exit_code(result: PassResult, applied: bool) -> int:
    if any(d.master is None for d in result.decisions) or any(o.error for o in result.haproxies):
        return EXIT_UNDECIDED
    if not result.decisions:
        return EXIT_UNDECIDED
    if any(n.event in ("backend_missing", "master_not_in_backend")
           for o in result.haproxies for n in o.plan.notes):
        return EXIT_DRIFT  # HAProxy cannot follow: its config lacks what Sentinel needs
    if applied:
        failed = any(not r.ok for o in result.haproxies for r in o.results)
        unsure = any(o.drift_after is None or o.drift_after for o in result.haproxies)
        return EXIT_DRIFT if failed or unsure else EXIT_OK
    return EXIT_DRIFT if any(o.plan.commands for o in result.haproxies) else EXIT_OK


def print_status(report: dict[str, Any], out: Any = sys.stdout) -> None:
    if not report["groups"]:  # no group known: say why (e.g. every Sentinel refused our AUTH)
        print("no master group known: no Sentinel answered", file=out)
        for v in report.get("sentinels", []):
            print(f"  sentinel {v['sentinel']}: {v['error'] or 'ok, monitors no master'}",
                  file=out)
        print(file=out)
    for g in report["groups"]:
        d = g["decision"]
        head = f"group {g['group']}: "
        if d["master"]:
            head += f"master {d['master']} epoch {d['epoch']}" + (" FENCED" if d["fenced"] else "")
        else:
            head += "UNDECIDED"
        print(f"{head}  ({d['reason']})", file=out)
        print(f"  {'sentinel':<24}{'master':<24}{'epoch':>6}  {'flags':<20}replicas", file=out)
        for v in g["sentinels"]:
            if v.get("master") is None:
                print(f"  {v['sentinel']:<24}-- {v['error']}", file=out)
                continue
            reps = ", ".join(
                f"{r['addr']}({'ok' if r['healthy'] else ','.join(r['flags'])})"
                for r in v["replicas"]
            ) or "-"
            flags = ",".join(v["flags"]) + (",TILT" if v["tilt"] else "")
            print(f"  {v['sentinel']:<24}{v['master']:<24}{v['epoch']:>6}  {flags:<20}{reps}",
                  file=out)
        for h in g["haproxy"]:
            print(f"  haproxy {h['haproxy']}" + (f": {h['error']}" if h["error"] else ""),
                  file=out)
            for b, servers in (h.get("backends") or {}).items():
                if servers is None:
                    print(f"    {b}: NO SUCH BACKEND", file=out)
                    continue
                for sv in servers:
                    mark = "" if sv["want"] in (None, sv["state"]) else f"  -> want {sv['want']}"
                    print(f"    {b:<22}{sv['server']:<12}{sv['addr']:<24}{sv['state']:<7}"
                          f"sessions={sv['sessions']}{mark}", file=out)
            for c in h["drift"]:
                print(f"    DRIFT: {c['command']}  # {c['reason']}", file=out)
            for n in h.get("config_problems", []):
                print(f"    CONFIG: {n['problem']}: {n['detail']}", file=out)
        print(file=out)


def cmd_status(s: Settings, as_json: bool) -> int:
    reader, haproxies, _ = wire(s)
    try:
        roster = roster_for(s)
        ctl = Controller(s, reader, haproxies, roster=roster)
        ctl.prime()
        result = ctl.reconcile("status", apply=False)
        roster.resolver.close()
    finally:
        reader.close()
    report = status_report(s, result)
    code = _exit_code(result, applied=False)
    report["exit_code"] = code
    if as_json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print_status(report)
        missing = any(h.get("config_problems") for g in report["groups"] for h in g["haproxy"])
        print({EXIT_OK: "in sync",
               EXIT_DRIFT: "HAProxy's config lacks what Sentinel needs (see CONFIG above)"
               if missing else "DRIFT: run `reconcile` or wait for the daemon",
               EXIT_UNDECIDED: "UNDECIDED or unreachable: HAProxy left as is"}[code])
    return code


def cmd_reconcile(s: Settings, as_json: bool) -> int:
    reader, haproxies, _ = wire(s)
    try:
        roster = roster_for(s)
        ctl = Controller(s, reader, haproxies, roster=roster,
                         haproxy_masters=masters_for(s, haproxies))
        ctl.prime()
        result = ctl.reconcile("cli", apply=not s.dry_run)
        roster.resolver.close()
    finally:
        reader.close()
    lines: list[dict[str, Any]] = []
    for o in result.haproxies:
        if o.error:
            lines.append({"haproxy": o.target, "error": o.error})
        done = {id(r.command): r for r in o.results}
        for c in o.plan.commands:
            r = done.get(id(c))
            status = "dry-run" if s.dry_run else ("ok" if r and r.ok else "FAILED")
            lines.append({"haproxy": o.target, "command": c.text, "reason": c.reason,
                          "result": status, "reply": r.output if r and not r.ok else None})
    for d in result.decisions:
        if d.master is None:
            lines.append({"group": d.name, "undecided": d.reason, "reply": None})
    if not result.decisions:  # no group known: say why (e.g. every Sentinel refused our AUTH)
        lines += [{"sentinel": v.sentinel, "error": v.error or "monitors no master"}
                  for v in result.views]
    code = _exit_code(result, applied=not s.dry_run)
    if as_json:
        json.dump({"commands": lines, "exit_code": code}, sys.stdout, indent=2)
        print()
    else:
        for ln in lines:
            if "command" in ln:
                extra = f"  -> {ln['reply']}" if ln["reply"] else ""
                print(f"[{ln['result']}] {ln['command']}  # {ln['reason']}{extra}")
            elif "undecided" in ln:
                print(f"[undecided] group {ln['group']}: {ln['undecided']}")
            elif "sentinel" in ln:
                print(f"[error] sentinel {ln['sentinel']}: {ln['error']}")
            else:
                print(f"[error] haproxy {ln['haproxy']}: {ln['error']}")
        if not lines:
            print("nothing to do: HAProxy matches Sentinel")
    return code


def layout_of(s: Settings) -> haproxy_config.Layout:
    return haproxy_config.Layout(
        write_backend=s.write_backend, read_backend=s.read_backend, slot_prefix=s.slot_prefix,
        slots=s.slots_per_backend, fallback_slots=s.fallback_slots,
        first_port=s.first_frontend_port, stats_port=s.stats_port, bind_address=s.bind_address,
        admin_socket=s.admin_socket, fixed_ports=s.fixed_ports(), group_slots=s.slots_for(),
        lease_map=s.write_lease_map if s.write_lease else "",
        state_file=s.state_file_for(s.admin_socket) or "",
    )


def cmd_config(s: Settings, sections_only: bool, output: str | None) -> int:
    """Print (or write) the generated haproxy.cfg: groups from the Sentinels, or `masters`."""
    groups = set(s.masters)
    if s.sentinels:
        try:
            addrs = [Address.parse(x, "sentinel address") for x in s.sentinels]
        except ValueError as e:
            raise SettingsError(str(e)) from None
        auth = Auth(s.sentinel_username or None, s.password(), s.sentinel_tls,
                    s.sentinel_tls_ca_file or None, s.sentinel_tls_cert_file or None,
                    s.sentinel_tls_key_file or None)
        reader = SentinelReader(addrs, auth, (), s.sentinel_timeout_s)
        try:
            reader.head(patient=True)  # learns the groups every Sentinel monitors
            views = reader.read(reader.master_names)
        finally:
            reader.close()
        if not any(v.error is None for v in views):
            for v in views:
                print(f"sentinel-haproxy: sentinel {v.sentinel}: {v.error}", file=sys.stderr)
            if not groups:
                print("sentinel-haproxy: no Sentinel answered and no --master given",
                      file=sys.stderr)
                return EXIT_UNDECIDED
        groups |= set(reader.master_names)
    elif not groups:
        raise SettingsError("config: give --sentinel HOST:PORT (groups from Sentinel) or "
                            "--master NAME for each group")
    try:
        text = haproxy_config.render(groups, layout_of(s), only=s.masters,
                                     sections_only=sections_only, version=__version__)
    except ValueError as e:
        raise SettingsError(str(e)) from None
    if output:
        with open(output, "w") as f:
            f.write(text)
        lease_map = Path(output).parent / s.write_lease_map
        if s.write_lease and not sections_only and not lease_map.exists():
            # HAProxy refuses a config whose map file is missing; an empty one refuses writes
            # until the controller's first lease.
            lease_map.write_text(haproxy_config.LEASE_MAP_TEXT)
            print(f"sentinel-haproxy: wrote {lease_map} (the write lease map, empty)",
                  file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LAB_COMMANDS:
        from lab.cli import main as lab_main  # only now: the daemon never loads the lab

        return lab_main(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        s = settings_from(args)
        quiet_cli = args.command in ("status", "reconcile", "config")
        logs.setup(s.log_format, "warning" if quiet_cli and s.log_level == "info" else s.log_level)
        if args.command == "run":
            return cmd_run(s)
        if args.command == "status":
            return cmd_status(s, args.json)
        if args.command == "config":
            return cmd_config(s, args.sections_only, args.output)
        return cmd_reconcile(s, args.json)
    except SettingsError as e:
        print(f"sentinel-haproxy: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
