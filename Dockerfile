# sentinel-haproxy controller image: the sidecar next to HAProxy (see compose/docker-compose.yml,
# deploy/kubernetes.yaml). Build from the repository root:  docker build -t sentinel-haproxy .
#
# Two stages: the wheel is built in the first, only it (and its dependencies) land in the second.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY controller ./controller
# The lab (demo, drills) ships in the wheel too, with the shipped configs as package data:
# lab/shipped-files/ links to ../haproxy and ../sentinel.
COPY lab ./lab
COPY haproxy ./haproxy
COPY sentinel ./sentinel
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin shx
# Non-root. To reach HAProxy's admin socket (mode 660) the container joins HAProxy's group
# (compose: group_add ["99"]; Kubernetes: securityContext.fsGroup / supplementalGroups).
USER 10001:10001
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SENTINEL_HAPROXY_LOG_FORMAT=json \
    SENTINEL_HAPROXY_METRICS_ADDRESS=127.0.0.1:9121
# Healthy = a Sentinel answered recently and every HAProxy socket is reachable (GET /healthz).
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-m", "controller.healthcheck"]
# `sentinel-haproxy run` by default; `docker run IMAGE status` / `reconcile --dry-run` also work.
ENTRYPOINT ["sentinel-haproxy"]
CMD ["run"]
