"""`python -m controller.healthcheck`: exit 0 when the daemon's `/healthz` answers 200, else 1.

For container health checks (the image's HEALTHCHECK, a Kubernetes exec probe): asks the metrics
endpoint of the daemon running in the same container, on loopback, at the port of
SENTINEL_HAPROXY_METRICS_ADDRESS (default 127.0.0.1:9121). Stdlib only (besides the project's
own model), one bounded request.
Must not talk to Sentinel or HAProxy itself: the daemon's own view is what counts.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from controller.model import Address

DEFAULT_ADDRESS = "127.0.0.1:9121"


def url_for(address: str) -> str:
    """`/healthz` URL for a metrics address; a wildcard bind is asked on loopback."""
    addr = Address.parse(address, "metrics address", default_host="127.0.0.1")
    host = addr.host
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{addr.port}/healthz"


def check(address: str, timeout_s: float = 2.0) -> tuple[bool, str]:
    try:
        url = url_for(address)
    except ValueError as e:
        return False, str(e)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status == 200, f"{r.status} {r.read().decode(errors='replace').strip()}"
    except urllib.error.HTTPError as e:
        return False, f"{e.code} {e.read().decode(errors='replace').strip()}"
    except (OSError, ValueError) as e:
        return False, f"{url}: {e}"


def main() -> int:
    address = os.environ.get("SENTINEL_HAPROXY_METRICS_ADDRESS") or DEFAULT_ADDRESS
    ok, detail = check(address)
    print(detail)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
