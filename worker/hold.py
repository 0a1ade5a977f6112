"""Paid-for answers held through a Redis outage, and stored once Redis answers again.

An answer the API sent (and billed) that cannot be stored is otherwise thrown away: the job's
lock lapses, it runs again and is billed again. So the run that has it keeps it and retries the
write (every 0.1 s, backing off to 1 s) for up to `MSGQ_ANSWER_HOLD_S` (60 s, counted from the
first failed write). The bound in time is that setting; the bound in memory is the worker's
slots (the run holding an answer holds its slot, as it did during the call) and
`MSGQ_ANSWER_HOLD_MAX_BYTES` across all of them. Each held answer logs `job.answer_held` once,
then `job.answer_stored` or `job.answer_given_up`.

The job's in-progress lock may lapse meanwhile, and another worker could then claim the job once
Redis is back. So the worker holding it takes its lock back as soon as it sees Redis again, and a
worker whose poll loop rode out an outage long enough for locks to lapse waits 6 s before it
claims anything (`worker.queue.upkeep.SETTLE_AFTER_OUTAGE_S`), by which time held answers are
stored (within a second of Redis answering): a re-run then finds the job locked or its record
terminal and sends nothing. A worker started afresh in those seconds does not wait; if its
re-run sends first, the first terminal write wins (records are write-once) and the other answer
is discarded (`job.duplicate_discarded`).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import NamedTuple, TypeVar

import orjson
import structlog
from redis.exceptions import RedisError

from schemas import JobError, JobErrorType

log = structlog.get_logger("msgq.job")

T = TypeVar("T")

FIRST_RETRY_S = 0.1
MAX_RETRY_S = 1.0  # Redis back: the answer is stored within this long


class Replicas(NamedTuple):
    """How many replicas must hold a stored answer, and how long one WAIT for them lasts."""

    wanted: int
    timeout_ms: int


class NotOnPrimaryError(RedisError):
    """The primary answering now has no terminal record for a job whose answer was written: the
    write went to a primary that failed before any replica had it. Held and written again."""


class Held(NamedTuple):
    """One answer held: whose, the API's request ID for it, its size."""

    job_id: str
    request_id: str | None
    size: int


MAX_UNSTORED = 10_000  # notes of answers given up, kept for the jobs' next attempts here


class AnswerHold:
    """The answers this worker holds (their bytes), against the settings' bounds, and a note of
    each one given up, so the job's next attempt on this worker says why the last one was lost
    (`unstored`; on another worker it reads as a worker lost mid-call)."""

    def __init__(self, hold_s: float, max_bytes: int, replicas: Replicas | None = None) -> None:
        self.hold_s, self.max_bytes = hold_s, max_bytes
        self.replicas = replicas  # MSGQ_SUBMIT_MIN_REPLICAS: an answer is stored once they have it
        self.replicas_short = False  # the last check found too few: the next WAIT is 1 ms
        self.held_bytes = 0
        self.held = 0  # answers held right now
        self._unstored: OrderedDict[str, JobError] = OrderedDict()  # job ID -> why

    async def store(
        self,
        write: Callable[[], Awaitable[T]],
        answer: object,
        *,
        job_id: str,
        request_id: str | None = None,
    ) -> T:
        """`write()` until it stores `answer` (the API's `request_id`); a RedisError is retried
        while the hold lasts and raised once it is over (or at once, when the answer does not
        fit the byte budget)."""
        try:
            return await write()
        except RedisError as exc:
            first = exc
        held = Held(job_id, request_id, len(orjson.dumps(answer)) if answer is not None else 0)
        if self.held_bytes + held.size > self.max_bytes or self.hold_s <= 0:
            reason = "memory" if self.hold_s > 0 else "no_hold"
            self._given_up(held, reason, time.monotonic(), 1, first)
            raise first
        self.held_bytes += held.size
        self.held += 1
        try:
            return await self._retry(write, first, held)
        finally:
            self.held_bytes -= held.size
            self.held -= 1

    def unstored(self, job_id: str) -> JobError | None:
        """Why this worker last gave up an answer of the job, once (None: it did not)."""
        return self._unstored.pop(job_id, None)

    async def _retry(self, write: Callable[[], Awaitable[T]], first: RedisError, held: Held) -> T:
        started = time.monotonic()
        log.warning(
            "job.answer_held",
            error=type(first).__name__,
            request_id=held.request_id,
            bytes=held.size,
            hold_s=self.hold_s,
            answers_held=self.held,
        )
        delay, tries = FIRST_RETRY_S, 1
        while True:
            left = self.hold_s - (time.monotonic() - started)
            if left <= 0:
                self._given_up(held, "hold_s", started, tries, first)
                raise first
            try:
                await asyncio.sleep(min(delay, left))
                tries += 1
                stored = await write()
            except RedisError as exc:
                first, delay = exc, min(delay * 2, MAX_RETRY_S)
            except asyncio.CancelledError:  # the worker's shutdown grace ran out meanwhile
                self._given_up(held, "shutdown", started, tries, first)
                raise
            else:
                held_s = round(time.monotonic() - started, 2)
                log.info("job.answer_stored", held_s=held_s, tries=tries, bytes=held.size)
                return stored

    def _given_up(
        self, held: Held, reason: str, started: float, tries: int, error: RedisError
    ) -> None:
        held_s = round(time.monotonic() - started, 2)
        log.error(
            "job.answer_given_up",
            reason=reason,
            request_id=held.request_id,
            bytes=held.size,
            held_s=held_s,
            tries=tries,
            error=type(error).__name__,
        )
        why = {
            "memory": "the worker held its limit of answers (MSGQ_ANSWER_HOLD_MAX_BYTES)",
            "no_hold": "MSGQ_ANSWER_HOLD_S is 0",
            "shutdown": f"the worker shut down after holding it {held_s:g} s",
        }.get(reason, f"held for MSGQ_ANSWER_HOLD_S, {self.hold_s:g} s, then given up")
        message = (
            f"the answer could not be stored: Redis unreachable ({why}); the API answered, "
            "and billed, it"
        )
        self._unstored[held.job_id] = JobError(
            type=JobErrorType.LOST, message=message, request_id=held.request_id
        )
        while len(self._unstored) > MAX_UNSTORED:
            self._unstored.popitem(last=False)
