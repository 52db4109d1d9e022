#!/bin/sh
# Entry point of the Sentinel containers (compose/docker-compose.yml).
#
# Sentinel REWRITES its config file (current master, epochs, known replicas and sentinels), so it
# must run on a private writable copy, never on the shipped read-only sentinel/sentinel.conf. The
# copy is made once, on the first start of the container, with the secrets appended:
#   requirepass <SENTINEL_PASSWORD>       clients (the controller) and the other sentinels AUTH
#                                         with it; without it anyone can PUBLISH __sentinel__:hello
#   sentinel auth-pass <group> <REDIS_PASSWORD>   for every `sentinel monitor` group; without it
#                                         a password-protected master looks s_down/o_down
#   each `sentinel monitor <group> <host>` host resolved to its IPv4 address (getent), when it
#                                         resolves: Sentinel 7.0 re-resolves a master's hostname on
#                                         every reconnect, so while the master's container is down
#                                         (its name gone from Docker's DNS) each lookup blocks
#                                         Sentinel until the resolver gives up (seconds where the
#                                         upstream DNS is unreachable): TILT, and no failover. The
#                                         addresses are static (docker-compose.yml), and Sentinel
#                                         writes IPs into its copy at its first rewrite anyway.
# A restarted container keeps its rewritten copy (and so what it learned); a re-created one starts
# from the shipped file and learns the current master from the other sentinels' hellos.
# Then it runs its arguments (the compose `command:`), normally
#   docker-entrypoint.sh redis-server /data/sentinel.conf --sentinel
# so the official image drops root for the `redis` user.
# Passwords end up in a config file: keep them to [A-Za-z0-9] (e.g. `openssl rand -hex 32`).
set -eu
src=${SENTINEL_CONF_SRC:-/conf/sentinel.conf}
conf=${SENTINEL_CONF:-/data/sentinel.conf}
if [ ! -s "$conf" ]; then
    : "${SENTINEL_PASSWORD:?SENTINEL_PASSWORD is not set}"
    : "${REDIS_PASSWORD:?REDIS_PASSWORD is not set}"
    umask 077
    awk '$1 == "sentinel" && $2 == "monitor" && NF >= 6 && $4 !~ /^[0-9.]+$/ && $4 !~ /:/ {
        cmd = "getent ahostsv4 \"" $4 "\" 2>/dev/null"
        ip = ""
        if ((cmd | getline res) > 0) { split(res, a, " "); ip = a[1] }
        close(cmd)
        if (ip != "") $4 = ip
    }
    { print }' "$src" > "$conf.tmp"
    {
        echo ""
        echo "# ---- added by sentinel-entrypoint.sh on first start ----"
        echo "requirepass $SENTINEL_PASSWORD"
        awk '$1 == "sentinel" && $2 == "monitor" { print $3 }' "$src" | while read -r group; do
            echo "sentinel auth-pass $group $REDIS_PASSWORD"
        done
    } >> "$conf.tmp"
    mv "$conf.tmp" "$conf"
fi
exec "$@"
