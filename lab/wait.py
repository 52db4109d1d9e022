"""The one bounded wait of the lab, its tests and benchmarks: poll a condition until a deadline.

Must not sleep for synchronisation anywhere else: every wait names what it waits for, and
its timeout says so (with the last error seen and, on request, a description of the state).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from lab.resp import RespError

T = TypeVar("T")

#: Errors that mean "not yet" while polling: a process still starting, a reply not there yet.
NOT_YET: tuple[type[BaseException], ...] = (OSError, RespError, ValueError, KeyError)


class WaitTimeout(RuntimeError):
    """A bounded wait ran out; the message names the condition (and the last error seen)."""


def wait_until(
    cond: Callable[[], T | None],
    timeout_s: float,
    what: str,
    interval_s: float = 0.02,
    context: Callable[[], str] | None = None,
    not_yet: tuple[type[BaseException], ...] = NOT_YET,
) -> T:
    """Poll `cond` until it returns a truthy value (returned); raise WaitTimeout naming `what`.

    Exceptions in `not_yet` count as "not yet" (the last one is quoted); any other exception
    ends the wait at once (e.g. a watched process exited). `context` is called on timeout to
    add a description of the state seen.
    """
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while True:
        try:
            value = cond()
            if value:
                return value
            last_error = ""
        except not_yet as e:
            last_error = f" (last error: {e!r})"
        if time.monotonic() >= deadline:
            extra = ""
            if context is not None:
                try:
                    extra = "\n" + context()
                except Exception as e:  # the context is a debugging aid only
                    extra = f"\n(context unavailable: {e!r})"
            raise WaitTimeout(
                f"timed out after {timeout_s:g} s waiting for {what}{last_error}{extra}"
            )
        time.sleep(interval_s)
