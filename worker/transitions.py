"""The task's record transitions: a pure change from `msgq.jobs.records`, applied through
JobStore.update, plus the log line and metric each state change owes."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, Protocol

import structlog

from msgq.jobs import records
from msgq.jobs.kept import keep_spec_from_queue
from msgq.jobs.records import utcnow
from msgq.jobs.retry_policy import keeps_request
from msgq.jobs.store import JobStore
from msgq.replicas import replicas_and_terminal
from schemas import JobError, JobRecord, JobStatus
from worker import metrics
from worker.hold import AnswerHold, NotOnPrimaryError

log = structlog.get_logger("msgq.job")


class RunningJob(Protocol):
    """The job as its own running task holds it (`worker.job.run.JobRun`): its terminal record
    can end it in the queue in the same write."""

    @property
    def job_id(self) -> str: ...

    def finish_commands(self) -> Sequence[tuple[str, ...]]: ...

    def mark_ended(self) -> None: ...


def _split(job: str | RunningJob) -> tuple[str, RunningJob | None]:
    return (job, None) if isinstance(job, str) else (job.job_id, job)


async def begin_attempt(
    store: JobStore,
    job_id: str,
    *,
    expected: bytes | None = None,
    current: JobRecord | None = None,
    lost_because: JobError | None = None,
) -> JobRecord | None:
    """queued/retrying/in_progress → in_progress with one more attempt; honours a cancel request.
    `expected`: the record's JSON as last read (`current`, parsed), for the one-round-trip
    write. `lost_because`: why an attempt still in progress was lost, when this worker knows."""
    change = functools.partial(records.begun, lost_because=lost_because)
    stored = await store.update(job_id, change, expected=expected, current=current)
    if stored is not None and stored.status is JobStatus.CANCELED:
        _log_finished(stored)
    return stored


async def finish(
    store: JobStore,
    job: str | RunningJob,
    status: JobStatus,
    *,
    expected: bytes | None = None,
    current: JobRecord | None = None,
    **fields: Any,
) -> JobRecord | None:
    """Write the terminal record once. A record that is already terminal stays as it is.

    `job`: its ID, or, from the task that runs it, its run: the same write then also ends the
    job in the queue (arq's finish, one round trip fewer) and the worker skips its own."""
    written: list[JobRecord] = []
    job_id, running = _split(job)
    error = fields.get("error")
    if keeps_request(status, error.type if isinstance(error, JobError) else None):
        # Before the write, which may take the queued payload with it: budget and deadline
        # endings happen before any attempt, so nothing else keeps the request for a retry.
        await keep_spec_from_queue(store.redis, store.keys, job_id, ttl_s=store.retention_s)

    def change(record: JobRecord) -> JobRecord:
        # Re-run after a WATCH conflict: always build from the latest record.
        written.append(records.ended(record, status, **fields))
        return written[-1]

    also = running.finish_commands() if running else ()
    stored = await store.update(job_id, change, expected=expected, current=current, also=also)
    if stored is None:
        return None
    if written and stored is written[-1]:  # ours was the write that stuck
        if running is not None:
            running.mark_ended()
        _log_finished(stored)
    else:
        log.warning(
            "job.duplicate_discarded", status=status.value, stored_status=stored.status.value
        )
    return stored


async def finish_durably(
    store: JobStore,
    job: str | RunningJob,
    status: JobStatus,
    *,
    hold: AnswerHold,
    expected: bytes | None = None,
    current: JobRecord | None = None,
    **fields: Any,
) -> JobRecord | None:
    """`finish` for an answer that was paid for: while Redis is unreachable the answer is held
    and the write retried (`worker.hold`, up to `MSGQ_ANSWER_HOLD_S`), because giving up means
    the job runs, and is billed, again. With `MSGQ_SUBMIT_MIN_REPLICAS`, the write counts once
    the primary that answers after it holds the terminal record (a primary that failed before
    its replica had the write lost it) and replicas are waited for; fewer of them than asked
    (none up) is logged, `job.answer_not_replicated`, not held."""
    job_id = _split(job)[0]

    async def write() -> JobRecord | None:
        # After an outage the record may have moved on: the compare-and-set then falls back to
        # a fresh read (`JobStore.update`), and a terminal record found there stays as it is.
        stored = await finish(store, job, status, expected=expected, current=current, **fields)
        if hold.replicas is not None and stored is not None:
            await _on_replicas(store, job_id, hold)
        return stored

    answer, request_id = fields.get("result"), fields.get("upstream_request_id")
    return await hold.store(write, answer, job_id=job_id, request_id=request_id)


async def _on_replicas(store: JobStore, job_id: str, hold: AnswerHold) -> None:
    """While replicas were short last time, WAIT 1 ms rather than the timeout: answers go on
    being stored at full speed until one is confirmed again."""
    replicas = hold.replicas
    assert replicas is not None
    timeout_ms = 1 if hold.replicas_short else replicas.timeout_ms
    acked, terminal = await replicas_and_terminal(
        store.redis, store.keys, job_id, replicas=replicas.wanted, timeout_ms=timeout_ms
    )
    if not terminal:
        msg = f"job {job_id}: the terminal record is not on the primary answering now"
        raise NotOnPrimaryError(msg)
    hold.replicas_short = acked < replicas.wanted
    if hold.replicas_short:
        log.warning("job.answer_not_replicated", job_id=job_id, replicas=acked)


def _log_finished(record: JobRecord) -> None:
    metrics.JOBS_FINISHED.labels(record.status.value).inc()
    error = record.error
    log.info(
        "job.finished",
        status=record.status.value,
        attempt=record.attempts,
        model=record.model,
        input_tokens=record.usage.input_tokens if record.usage else None,
        output_tokens=record.usage.output_tokens if record.usage else None,
        cost_usd=record.cost_usd,
        request_id=record.upstream_request_id or (error.request_id if error else None),
        status_code=error.status_code if error else None,
        error_type=error.type if error else None,
    )


async def schedule_retry(
    store: JobStore, job_id: str, *, delay_s: float, error: JobError
) -> JobRecord | None:
    """in_progress → retrying with next_attempt_at; `expired` if the deadline comes first."""
    next_at = utcnow() + timedelta(seconds=delay_s)
    stored = await store.update(
        job_id, lambda r: records.retry_scheduled(r, next_at=next_at, error=error)
    )
    if stored is not None and stored.status.terminal:
        _log_finished(stored)
    elif stored is not None:
        log.info(
            "job.retry_scheduled",
            attempt=stored.attempts,
            model=stored.model,
            delay_s=round(delay_s, 3),
            cause=error.type,
            status_code=error.status_code,
            request_id=error.request_id,
        )
    return stored


async def requeue(store: JobStore, job_id: str, *, error: JobError | None) -> JobRecord | None:
    """Back to queued with the reason shown, and the attempt not charged."""
    stored = await store.update(job_id, lambda r: records.requeued(r, error=error))
    if stored is not None and stored.status.terminal:
        _log_finished(stored)
    return stored


async def record_crash(
    store: JobStore, job_id: str, *, error: JobError, backoff: Callable[[int], float]
) -> JobRecord | None:
    """Task code raised: that counts as an attempt (once); retrying, or failed when spent."""
    stored = await store.update(job_id, lambda r: records.crashed(r, error=error, backoff=backoff))
    if stored is not None and stored.status.terminal:
        _log_finished(stored)
    return stored


class StoppedRun(Protocol):
    """A run stopped by a shutdown or a cancel (`worker.job.run.JobRun`)."""

    @property
    def job_id(self) -> str: ...

    @property
    def attempt(self) -> int | None: ...


async def release_after_shutdown(store: JobStore, run: StoppedRun) -> None:
    """A worker stopped mid-attempt: back to queued, the attempt not charged to the job, and
    noted `cut` in its timeline (the call may have been answered, and billed)."""
    cut = run.attempt
    stored = await store.update(run.job_id, lambda r: records.released(r, cut_attempt=cut))
    if stored is not None:
        log.info("job.released", status=stored.status.value, attempt=stored.attempts, began=cut)
