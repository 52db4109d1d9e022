# Stand-in for the official `redis:7.0` image, built from Debian bookworm's packages (no registry
# is reachable on the test machines). It provides what compose/docker-compose.yml and
# compose/sentinel-entrypoint.sh use from the official image:
#   - redis-server and redis-cli on PATH, also under /usr/local/bin like the official build;
#   - user and group `redis` 999:999, WORKDIR and VOLUME /data owned by redis;
#   - /usr/local/bin/docker-entrypoint.sh (same logic as the official one): a first argument that is
#     an option or a *.conf file means redis-server; redis-server started as root chowns the
#     working directory to redis and re-executes itself as redis via gosu; umask 0077.
# Not faithful: Debian's 7.0.15 (official 7.0.x builds from source); the official build turns
# protected-mode off by default, Debian's keeps it on (our redis.conf sets `protected-mode no`, and
# the Sentinels get a requirepass, so protected mode never applies to the shipped files).
FROM local/bookworm
RUN groupadd --system --gid 999 redis \
    && useradd --system --gid redis --uid 999 --home-dir /data --no-create-home redis
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server redis-tools gosu \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/redis-server /usr/local/bin/redis-server \
    && ln -s /usr/bin/redis-cli /usr/local/bin/redis-cli \
    && mkdir /data && chown redis:redis /data
VOLUME /data
WORKDIR /data
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENTRYPOINT ["docker-entrypoint.sh"]
EXPOSE 6379
CMD ["redis-server"]
