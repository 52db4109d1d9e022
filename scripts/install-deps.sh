#!/bin/sh
# Install what `make test` and `make demo` need on a Debian machine, only when missing:
# haproxy, redis-server, redis-sentinel, iproute2 and iptables (partition drills), Debian
# packages, and python3-venv; best effort: docker-compose, docker.io and debootstrap
# (tests/test_compose.py validates the compose file with docker-compose; tests/test_docker.py
# runs it on a private dockerd with images built from a debootstrap'd Debian; those tests skip,
# saying why, without them) and prometheus (promtool checks the alert rules).
# Services are NOT started by the packages (a policy-rc.d denies it while installing):
# tests and the demo start their own processes on loopback.
set -eu
need=""
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need="$need haproxy"
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
command -v redis-sentinel >/dev/null 2>&1 || need="$need redis-sentinel"
command -v redis-cli >/dev/null 2>&1 || need="$need redis-tools"
# Partition drills (lab/partition.py): network namespaces and iptables inside them.
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || need="$need iproute2"
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || need="$need iptables"
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need="$need python3-venv"
optional=""
command -v docker-compose >/dev/null 2>&1 || optional="docker-compose"
PATH="$PATH:/usr/sbin:/sbin"
command -v dockerd >/dev/null 2>&1 || optional="$optional docker.io"
command -v debootstrap >/dev/null 2>&1 || optional="$optional debootstrap"
# promtool (Debian's prometheus package) checks deploy/prometheus-alerts.yaml
command -v promtool >/dev/null 2>&1 || optional="$optional prometheus"
optional=${optional# }
[ -z "$need$optional" ] && exit 0
echo "installing:$need${optional:+ (optional: $optional)}"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
policy=/usr/sbin/policy-rc.d
created=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    created=1
fi
cleanup() { if [ -n "$created" ]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null || echo "apt-get update failed; trying with the current lists"
if [ -n "$need" ]; then
    # shellcheck disable=SC2086  # word splitting of the package list is wanted
    $SUDO apt-get install -y -q --no-install-recommends $need >/dev/null
fi
if [ -n "$optional" ]; then
    # One by one: a package that cannot be installed only skips its own tests.
    for pkg in $optional; do
        $SUDO apt-get install -y -q --no-install-recommends "$pkg" >/dev/null \
            || echo "could not install $pkg: the tests that need it will be skipped"
    done
fi
