"""The dashboard's and records' wording a newcomer reads (issue 25, trap 9)."""

from __future__ import annotations

from msgq.http.ui import job_view
from msgq.jobs import records
from schemas import JobError, JobRecord, JobStatus


def _record(**fields: object) -> JobRecord:
    base = JobRecord(id="j1", status=JobStatus.QUEUED, max_attempts=8, created_at=records.utcnow())
    return base.model_copy(update=fields)


def test_an_ending_before_any_attempt_is_not_called_attempt_0() -> None:
    """A budget failure before any call reads "ended before any attempt", and an attempt's
    upstream request_id is shown beside its error."""
    error = JobError(type="budget_exceeded", message="reserves $0.01")
    failed = records.ended(_record(), JobStatus.FAILED, error=error)
    assert [e["what"] for e in job_view.timeline(failed) if e["error"]] == [
        "ended before any attempt: budget_exceeded"
    ]
    begun = records.begun(_record())
    upstream = JobError(type="overloaded_error", message="busy", status_code=529, request_id="r-1")
    retried = records.retry_scheduled(begun, next_at=records.utcnow(), error=upstream)
    details = [e["detail"] for e in job_view.timeline(retried) if e["error"]]
    assert details == ["busy (request_id r-1)"]


def test_an_ended_job_waits_for_nothing() -> None:
    """A canceled batch-lane job no longer says `waiting_reason: batch_pool`."""
    waiting = _record(waiting_reason="batch_pool")
    assert records.ended(waiting, JobStatus.CANCELED).waiting_reason is None
