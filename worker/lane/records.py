"""The batch lane's record transitions, pure like `msgq.jobs.records`: record in, new record (or
None for no change) out, applied by the store under WATCH."""

from __future__ import annotations

from msgq.jobs import records
from msgq.jobs.records import utcnow
from msgq.lanes import WAITING_POOL
from schemas import JobError, JobRecord, JobStatus


def pooled(record: JobRecord) -> JobRecord | None:
    """Into the pool: `queued`, waiting for an upstream batch (a cancel request wins)."""
    if record.cancel_requested:
        return records.ended(record, JobStatus.CANCELED)
    if record.status is JobStatus.QUEUED and record.waiting_reason == WAITING_POOL:
        return None
    refund = 1 if record.status is JobStatus.IN_PROGRESS else 0
    return record.model_copy(
        update={
            "status": JobStatus.QUEUED,
            "attempts": max(0, record.attempts - refund),
            "waiting_reason": WAITING_POOL,
            "next_attempt_at": None,
            "upstream_batch_id": None,
        }
    )


def sent_upstream(record: JobRecord, attempt: int) -> JobRecord | None:
    """Chosen for an upstream batch as send number `attempt` (idempotent: a re-run after a crash
    finds the attempt already counted)."""
    if record.status is JobStatus.IN_PROGRESS and record.attempts >= attempt:
        return None
    return record.model_copy(
        update={
            "status": JobStatus.IN_PROGRESS,
            "attempts": max(attempt, record.attempts),
            "started_at": record.started_at or utcnow(),
            "next_attempt_at": None,
            "waiting_reason": None,
            "upstream_batch_id": None,
        }
    )


def upstream_recorded(record: JobRecord, upstream_id: str) -> JobRecord | None:
    """The upstream batch's ID, once msgq has recorded it: polling and SSE show it."""
    if record.status is not JobStatus.IN_PROGRESS or record.upstream_batch_id == upstream_id:
        return None
    return record.model_copy(update={"upstream_batch_id": upstream_id})


def sent_again(
    record: JobRecord, *, error: JobError | None, refund: bool, to_pool: bool
) -> JobRecord | None:
    """Back to the pool (`to_pool`) or to the realtime queue after an errored or expired
    request; an expired request never ran, so its attempt is refunded."""
    if record.cancel_requested:
        return records.ended(record, JobStatus.CANCELED, error=error)
    return record.model_copy(
        update={
            "status": JobStatus.QUEUED,
            "attempts": max(0, record.attempts - (1 if refund else 0)),
            "waiting_reason": WAITING_POOL if to_pool else None,
            "upstream_batch_id": None,
            "next_attempt_at": None,
            "error": error if error is not None else record.error,
        }
    )
