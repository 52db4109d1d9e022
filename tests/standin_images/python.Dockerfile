# Stand-in for the official `python:3.11-slim` image, built from Debian bookworm's Python 3.11
# (no registry is reachable on the test machines). It provides what the shipped Dockerfile uses:
# `python`, `python3` and `pip` on PATH; `pip install` as root puts packages and their scripts
# (sentinel-haproxy) under /usr/local like the official image; `useradd`; LANG C.UTF-8.
# Not faithful: Debian's 3.11.2 and pip 23 (official: 3.11.x built from source under /usr/local,
# a newer pip); Debian marks its Python EXTERNALLY-MANAGED, removed here because the official
# image has no such marker. This machine's egress intercepts TLS: the host's CA bundle is
# copied in and PIP_CERT points at it, or pip inside `docker build` finds no distribution.
FROM local/bookworm
ENV LANG=C.UTF-8
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip python-is-python3 \
        ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && rm -f /usr/lib/python3*/EXTERNALLY-MANAGED
COPY host-ca-bundle.crt /etc/ssl/certs/host-ca-bundle.crt
ENV PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt
CMD ["python3"]
