"""Paid-for answers held through a Redis outage, and stored once Redis answers again.

An answer the API sent (and billed) that cannot be stored is otherwise thrown away: the job's
lock lapses, it runs again and is billed again. So the run that has it keeps it and retries the
write (every 0.1 s, backing off to 1 s) for up to `MSGQ_ANSWER_HOLD_S` (60 s). The bound in time
is that setting; the bound in memory is the worker's slots (the run holding an answer holds its
slot, as it did during the call) and `MSGQ_ANSWER_HOLD_MAX_BYTES` across all of them. Each held
answer logs `job.answer_held` once, then `job.answer_stored` or `job.answer_given_up`.

The job's in-progress lock may lapse meanwhile, so another worker may claim the job once Redis
is back. So a worker whose poll loop rode out an outage waits `RECONNECT_SETTLE_S` (2 s) after
Redis answers before it claims anything, and held answers are stored within a second: a re-run
then finds the record terminal and sends nothing. A worker started afresh during those two
seconds does not wait; if its re-run sends first, the first terminal write wins (records are
write-once) and the other answer is discarded (`job.duplicate_discarded`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import orjson
import structlog
from redis.exceptions import RedisError

log = structlog.get_logger("msgq.job")

T = TypeVar("T")

FIRST_RETRY_S = 0.1
MAX_RETRY_S = 1.0  # Redis back: the answer is stored within this long
# How long a worker waits, once Redis answers after an outage, before it claims jobs again: the
# held answers of every worker are stored by then (`worker.queue.loop`).
RECONNECT_SETTLE_S = 2 * MAX_RETRY_S


class AnswerHold:
    """The answers this worker holds (their bytes), against the settings' bounds."""

    def __init__(self, hold_s: float, max_bytes: int) -> None:
        self.hold_s, self.max_bytes = hold_s, max_bytes
        self.held_bytes = 0
        self.held = 0  # answers held right now

    async def store(self, write: Callable[[], Awaitable[T]], answer: object) -> T:
        """`write()` until it stores `answer`; a RedisError is retried while the hold lasts and
        raised once it is over (or at once, when the answer does not fit the byte budget)."""
        try:
            return await write()
        except RedisError as exc:
            first = exc
        size = len(orjson.dumps(answer)) if answer is not None else 0
        if self.held_bytes + size > self.max_bytes or self.hold_s <= 0:
            log.error(
                "job.answer_given_up",
                reason="memory" if self.hold_s > 0 else "no_hold",
                bytes=size,
                held_bytes=self.held_bytes,
                error=type(first).__name__,
            )
            raise first
        self.held_bytes += size
        self.held += 1
        try:
            return await self._retry(write, first, size)
        finally:
            self.held_bytes -= size
            self.held -= 1

    async def _retry(self, write: Callable[[], Awaitable[T]], first: RedisError, size: int) -> T:
        started = time.monotonic()
        log.warning(
            "job.answer_held",
            error=type(first).__name__,
            bytes=size,
            hold_s=self.hold_s,
            answers_held=self.held,
        )
        delay, tries = FIRST_RETRY_S, 1
        while True:
            left = self.hold_s - (time.monotonic() - started)
            if left <= 0:
                self._given_up("hold_s", started, tries, first)
                raise first
            try:
                await asyncio.sleep(min(delay, left))
                tries += 1
                stored = await write()
            except RedisError as exc:
                first, delay = exc, min(delay * 2, MAX_RETRY_S)
            except asyncio.CancelledError:  # the worker's shutdown grace ran out meanwhile
                self._given_up("shutdown", started, tries, first)
                raise
            else:
                held_s = round(time.monotonic() - started, 2)
                log.info("job.answer_stored", held_s=held_s, tries=tries, bytes=size)
                return stored

    @staticmethod
    def _given_up(reason: str, started: float, tries: int, error: RedisError) -> None:
        log.error(
            "job.answer_given_up",
            reason=reason,
            held_s=round(time.monotonic() - started, 2),
            tries=tries,
            error=type(error).__name__,
        )
