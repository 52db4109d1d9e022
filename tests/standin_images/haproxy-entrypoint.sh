#!/bin/sh
# docker-entrypoint.sh of the haproxy:2.6 stand-in: the official image's behaviour, re-stated.
set -e
# first arg is `-f` or `--some-option`: run haproxy with it
if [ "${1#-}" != "$1" ]; then
    set -- haproxy "$@"
fi
# haproxy: master-worker mode (-W, reload with SIGUSR2) in the foreground (-db)
if [ "$1" = 'haproxy' ]; then
    shift
    set -- haproxy -W -db "$@"
fi
exec "$@"
