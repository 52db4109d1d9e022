"""structlog set-up: JSON lines when stderr is not a TTY, readable console lines when it is.

Every line has `event`, `level`, `ts` (UTC ISO). Secrets never reach a log: a processor
masks any key that looks like a secret, as a second line of defence.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_WORDS = ("password", "secret", "token", "passwd")


@functools.lru_cache(maxsize=1024)  # the keys are the code's own: a few dozen names
def _secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(w in lowered for w in _SECRET_WORDS)


def _mask_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if _secret_key(key) and event[key]:
            event[key] = "***"
    return event


def setup(fmt: str = "auto", level: str = "info") -> None:
    """Configure structlog for the process; `fmt` is auto, json or console."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            _mask_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
