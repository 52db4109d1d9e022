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
# The monitored masters stay names (redis1a...), as every node is known (resolve-hostnames,
# announce-hostnames): a container back with another IP is the same node. A stopped container's
# name must then fail to resolve at once, not after the resolver's timeout, or Sentinel freezes
# on it at every reconnect: the compose file's dns_opt (ndots) sees to that.
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
    {
        cat "$src"
        echo ""
        echo "# ---- added by sentinel-entrypoint.sh on first start ----"
        echo "requirepass $SENTINEL_PASSWORD"
        awk '$1 == "sentinel" && $2 == "monitor" { print $3 }' "$src" | while read -r group; do
            echo "sentinel auth-pass $group $REDIS_PASSWORD"
        done
    } > "$conf.tmp"
    mv "$conf.tmp" "$conf"
fi
exec "$@"
