"""Record transitions the task makes: each a small pure change applied through JobStore.update."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog

from schemas import JobError, JobRecord, JobSpec, JobStatus
from worker.runtime import metrics
from worker.store import JobStore, utcnow

log = structlog.get_logger("msgq.job")


def new_record(
    job_id: str, spec: JobSpec | None, *, created_at: datetime, default_max_attempts: int
) -> JobRecord:
    """The record a job starts with (also made by the worker for raw-Redis producers)."""
    return JobRecord(
        id=job_id,
        status=JobStatus.QUEUED,
        max_attempts=(spec.max_attempts if spec and spec.max_attempts else default_max_attempts),
        created_at=created_at,
        deadline=spec.deadline if spec else None,
        model=_model_of(spec),
        metadata=spec.metadata if spec else {},
    )


def _model_of(spec: JobSpec | None) -> str | None:
    model = spec.request.get("model") if spec else None
    return model[:256] if isinstance(model, str) else None


async def begin_attempt(store: JobStore, job_id: str) -> JobRecord | None:
    """queued/retrying/in_progress → in_progress with one more attempt; honours a cancel request."""

    def change(record: JobRecord) -> JobRecord:
        if record.cancel_requested:
            return _ended(record, JobStatus.CANCELED)
        return record.model_copy(
            update={
                "status": JobStatus.IN_PROGRESS,
                "attempts": record.attempts + 1,
                "started_at": record.started_at or utcnow(),
                "next_attempt_at": None,
            }
        )

    return await store.update(job_id, change)


async def finish(
    store: JobStore, job_id: str, status: JobStatus, **fields: Any
) -> JobRecord | None:
    """Write the terminal record once. A record that is already terminal stays as it is."""
    written: list[JobRecord] = []

    def change(record: JobRecord) -> JobRecord:
        # Re-run after a WATCH conflict: always build from the latest record.
        written.append(_ended(record, status, **fields))
        return written[-1]

    stored = await store.update(job_id, change)
    if stored is None:
        return None
    if written:
        _log_finished(stored)
    else:
        log.warning(
            "job.duplicate_discarded", status=status.value, stored_status=stored.status.value
        )
    return stored


def _ended(record: JobRecord, status: JobStatus, **fields: Any) -> JobRecord:
    return record.model_copy(
        update={"status": status, "finished_at": utcnow(), "next_attempt_at": None, **fields}
    )


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

    def change(record: JobRecord) -> JobRecord:
        if record.deadline is not None and next_at >= record.deadline:
            return _ended(record, JobStatus.EXPIRED, error=error)
        return record.model_copy(
            update={"status": JobStatus.RETRYING, "next_attempt_at": next_at, "error": error}
        )

    stored = await store.update(job_id, change)
    if stored is not None and stored.status is JobStatus.EXPIRED:
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


async def requeue(store: JobStore, job_id: str, *, error: JobError) -> JobRecord | None:
    """Back to queued with the reason shown, and the attempt not charged (fleet paused)."""

    def change(record: JobRecord) -> JobRecord:
        return record.model_copy(
            update={
                "status": JobStatus.QUEUED,
                "attempts": max(0, record.attempts - 1),
                "error": error,
            }
        )

    return await store.update(job_id, change)


async def record_crash(
    store: JobStore, job_id: str, *, error: JobError, backoff: Callable[[int], float]
) -> JobRecord | None:
    """Task code raised: that counts as an attempt (once); retrying, or failed when spent."""

    def change(record: JobRecord) -> JobRecord:
        attempts = (
            record.attempts if record.status is JobStatus.IN_PROGRESS else record.attempts + 1
        )
        if attempts >= record.max_attempts:
            return _ended(record, JobStatus.FAILED, attempts=attempts, error=error)
        next_at = utcnow() + timedelta(seconds=backoff(attempts))
        return record.model_copy(
            update={
                "status": JobStatus.RETRYING,
                "attempts": attempts,
                "next_attempt_at": next_at,
                "error": error,
            }
        )

    stored = await store.update(job_id, change)
    if stored is not None and stored.status is JobStatus.FAILED:
        _log_finished(stored)
    return stored


async def release_after_shutdown(store: JobStore, job_id: str) -> None:
    """A worker stopped mid-attempt: back to queued, and the attempt is not charged to the job."""

    def change(record: JobRecord) -> JobRecord | None:
        if record.cancel_requested:
            return _ended(record, JobStatus.CANCELED)
        if record.status is not JobStatus.IN_PROGRESS:
            return None
        return record.model_copy(
            update={"status": JobStatus.QUEUED, "attempts": max(0, record.attempts - 1)}
        )

    stored = await store.update(job_id, change)
    if stored is not None:
        log.info("job.released", status=stored.status.value, attempt=stored.attempts)
