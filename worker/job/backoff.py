"""The retry policy: how long to wait before the next attempt."""

from __future__ import annotations

import random

from msgq.settings import Settings


def backoff_delay_s(
    attempt: int,
    *,
    base_s: float = 1.0,
    factor: float = 2.0,
    max_s: float = 60.0,
    rng: random.Random | None = None,
) -> float:
    """Exponential backoff with "equal jitter": half the step fixed, half random.

    `attempt` is the number of calls already made (1 after the first failure). Half fixed keeps a
    floor under the wait (full jitter can retry at once); half random spreads a thundering herd.
    """
    step = min(max_s, base_s * factor ** max(0, attempt - 1))
    return step / 2 + (rng or random).uniform(0, step / 2)


def retry_delay_s(
    attempt: int,
    retry_after_s: float | None,
    *,
    base_s: float,
    factor: float,
    max_s: float,
) -> float:
    """The server's word wins when it gives one; otherwise backoff."""
    if retry_after_s is not None and retry_after_s >= 0:
        return retry_after_s
    return backoff_delay_s(attempt, base_s=base_s, factor=factor, max_s=max_s)


def retry_delay_for(settings: Settings, attempt: int, retry_after_s: float | None = None) -> float:
    """`retry_delay_s` with the fleet's backoff settings (`MSGQ_BACKOFF_*`): the one policy for
    a job's next attempt, realtime or batched."""
    return retry_delay_s(
        attempt,
        retry_after_s,
        base_s=settings.backoff_base_s,
        factor=settings.backoff_factor,
        max_s=settings.backoff_max_s,
    )
