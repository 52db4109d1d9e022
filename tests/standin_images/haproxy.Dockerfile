# Stand-in for the official `haproxy:2.6` image, built from Debian bookworm's haproxy 2.6 package
# (no registry is reachable on the test machines). It provides what compose/docker-compose.yml and
# haproxy/haproxy.cfg use from the official image:
#   - user and group `haproxy` with uid/gid 99 (the socket directory is chowned to 99:99 and the
#     controller joins group 99), home /var/lib/haproxy, and the image runs as that user;
#   - /usr/local/etc/haproxy/ for haproxy.cfg and the command
#     `haproxy -f /usr/local/etc/haproxy/haproxy.cfg`;
#   - /usr/local/bin/docker-entrypoint.sh (official logic: options mean haproxy; haproxy runs with
#     -W -db, master-worker in the foreground); STOPSIGNAL SIGUSR1 (graceful stop);
#   - NO /var/run/haproxy directory (the official image has none: compose's haproxy-socket-init
#     creates it in the named volume), so the volume starts root-owned as with the real image.
# Not faithful: Debian's 2.6.12 build and its extra files (/etc/haproxy, the Debian service files).
FROM local/bookworm
# Debian's postinst creates `haproxy` with a dynamic system uid (it refuses an existing uid 99,
# outside its system range): install first, then move user and group to 99:99.
RUN apt-get update \
    && apt-get install -y --no-install-recommends haproxy \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /run/haproxy /var/run/haproxy \
    && old_uid="$(id -u haproxy)" && old_gid="$(id -g haproxy)" \
    && groupmod --gid 99 haproxy && usermod --uid 99 --gid 99 haproxy \
    && find / -xdev \( -uid "$old_uid" -o -gid "$old_gid" \) -exec chown -h 99:99 '{}' + \
    && mkdir -p /var/lib/haproxy && chown haproxy:haproxy /var/lib/haproxy \
    && ln -s /usr/sbin/haproxy /usr/local/sbin/haproxy \
    && mkdir -p /usr/local/etc/haproxy \
    && test "$(id -u haproxy):$(id -g haproxy)" = 99:99
STOPSIGNAL SIGUSR1
COPY haproxy-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENTRYPOINT ["docker-entrypoint.sh"]
USER haproxy
WORKDIR /var/lib/haproxy
CMD ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
