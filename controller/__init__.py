"""sentinel-haproxy: make HAProxy follow Redis Sentinel within milliseconds."""

__version__ = "0.1.0"
