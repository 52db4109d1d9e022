"""The write lease: how long HAProxy may go on accepting new write connections without
hearing from this controller again. Pure: no I/O, no clock of its own.

The lease is valid while the controller hears from a majority of the Sentinels (their pongs
on the event connections, every `sentinel_ping_interval_s`): it ends `ttl_s` after the
majority-th most recent pong. HAProxy itself checks it on every new write connection (a map
entry compared with its own clock, see haproxy/haproxy.cfg), so a controller that dies, hangs
or is cut off from the Sentinels' majority stops new writes within `ttl_s`; a controller that
is alive but cut off also fences the write backends itself (established sessions too).
With a TTL shorter than Sentinel's `down-after-milliseconds`, writes stop on a minority side
before the majority can promote another master.
"""

from __future__ import annotations

from collections.abc import Sequence

MIN_TTL_S = 1.0


def ttl_for(down_after_ms: Sequence[int], configured_s: float) -> float:
    """The TTL: the configured one, or (0: auto) half the smallest `down-after-milliseconds`
    of the groups, at least MIN_TTL_S."""
    if configured_s > 0:
        return configured_s
    shortest = min(down_after_ms, default=0)
    return max(MIN_TTL_S, shortest / 2000) if shortest else MIN_TTL_S * 2


def valid_until(pongs: Sequence[float], members: int, ttl_s: float,
                min_sentinels: int = 0) -> float | None:
    """Until when (same clock as `pongs`) a majority of `members` Sentinels vouch (or
    `min_sentinels` of them, when set: the votes the verdicts need too); None when fewer
    answered at all."""
    need = min_sentinels or members // 2 + 1
    recent = sorted(pongs, reverse=True)
    if members < 1 or len(recent) < need:
        return None
    return recent[need - 1] + ttl_s
