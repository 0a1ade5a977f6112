"""Job records and their transitions as pure functions: record in, new record (or None) out.

The store applies them under WATCH (re-running one on a conflict, so each must build from the
record it is given); the runtime adds logging and metrics. Keeping them pure lets every rule be
unit-tested without Redis. A transition never sees a terminal record: the store keeps those.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from msgq.errors import InvalidJobError
from msgq.jobs.retry_policy import retry_verdict
from msgq.trace_context import trace_id_of, valid_traceparent
from schemas import (
    DEFAULT_MAX_IMAGE_BYTES,
    JobError,
    JobErrorType,
    JobRecord,
    JobSpec,
    JobStatus,
    Lane,
    MessageRequest,
    Priority,
    field_errors,
    summarize,
)
from schemas import validate_request as _validate_request
from schemas.jobs import AttemptError
from schemas.model_info import ModelLimits
from schemas.versions import version_problem


def utcnow() -> datetime:
    return datetime.now(UTC)


def build_spec(
    body: dict[str, Any],
    *,
    metadata: dict[str, Any] | None = None,
    deadline: datetime | None = None,
    max_attempts: int | None = None,
    validate: bool = True,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    lane: Lane | str | None = None,
    priority: Priority | str | None = None,
    tenant: str | None = None,
    callback_url: str | None = None,
    anthropic_version: str | None = None,
    betas: list[str] | None = None,
    workspace_id: str | None = None,
    api_headers: dict[str, str] | None = None,
    trace: dict[str, str] | None = None,
) -> JobSpec:
    """The job spec for a request, validated unless the worker is to do that (batches).

    Raises InvalidJobError with every field error; nothing is enqueued then.
    """
    if validate:
        validated(body, max_image_bytes=max_image_bytes, anthropic_version=anthropic_version)
    fields = {
        "request": body,
        "metadata": metadata or {},
        "deadline": deadline,
        "max_attempts": max_attempts,
        "lane": lane,
        "priority": priority,
        "tenant": tenant,
        "callback_url": callback_url,
        "anthropic_version": anthropic_version,
        "betas": betas,
        "workspace_id": workspace_id,
        "api_headers": api_headers or None,
        **(trace or {}),
    }
    try:
        return JobSpec.model_validate(fields)
    except ValidationError as exc:
        errors = field_errors(exc, fields)
        msg = f"invalid job: {summarize(errors, 3)}"
        raise InvalidJobError(msg, errors) from None


def validated(
    body: dict[str, Any],
    *,
    max_image_bytes: int,
    anthropic_version: str | None = None,
    models: Mapping[str, ModelLimits] | None = None,
    in_batch: bool = False,
) -> MessageRequest:
    """The request as the API would check it under `anthropic_version` (None: 2023-06-01),
    with the Models API's limits where known; InvalidJobError with every field error."""
    problem = version_problem(anthropic_version) if anthropic_version is not None else None
    if problem is not None:
        row = {"loc": "anthropic_version", "msg": problem, "type": "value_error"}
        raise InvalidJobError(problem, [row])
    try:
        return _validate_request(
            body,
            max_image_bytes=max_image_bytes,
            anthropic_version=anthropic_version,
            models=models,
            in_batch=in_batch,
        )
    except ValidationError as exc:
        errors = field_errors(exc, body)
        msg = f"invalid request: {summarize(errors, 3)}"
        raise InvalidJobError(msg, errors) from None


def new_record(
    job_id: str,
    spec: JobSpec | None,
    *,
    created_at: datetime,
    default_max_attempts: int,
    tenant: str | None = None,
    batch_id: str | None = None,
    custom_id: str | None = None,
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
        lane=spec.lane if spec and spec.lane else Lane.REALTIME,
        priority=spec.priority if spec and spec.priority else Priority.DEFAULT,
        callback_url=spec.callback_url if spec else None,
        tenant=tenant or (spec.tenant if spec else None),
        batch_id=batch_id,
        custom_id=custom_id,
        anthropic_version=spec.anthropic_version if spec else None,
        betas=spec.betas if spec else None,
        workspace_id=spec.workspace_id if spec else None,
        api_headers=spec.api_headers if spec else None,
        trace_id=trace_id_of(spec.traceparent) if spec else None,
        traceparent=valid_traceparent(spec.traceparent) if spec else None,
    )


def _model_of(spec: JobSpec | None) -> str | None:
    model = spec.request.get("model") if spec else None
    return model[:256] if isinstance(model, str) else None


MAX_ATTEMPT_ERRORS = 20


def logged(record: JobRecord, error: JobError, attempt: int | None = None) -> list[AttemptError]:
    """The record's attempt timeline with `error` added (the newest 20 kept)."""
    entry = AttemptError(
        attempt=record.attempts if attempt is None else attempt,
        at=utcnow(),
        type=error.type,
        message=error.message[:500],
        status_code=error.status_code,
        request_id=error.request_id,
    )
    return [*record.attempt_errors, entry][-MAX_ATTEMPT_ERRORS:]


CUT_MESSAGE = (
    "the worker stopped mid-call (a shutdown past its grace period): the API may have "
    "answered, and billed, it; the attempt is not charged"
)
CANCELED_MESSAGE = "canceled mid-call: the API may have answered, and billed, it"
LOST_MESSAGE = (
    "the worker was lost mid-call (found at the next attempt): killed, crashed or cut off from "
    "Redis before an outcome was stored; the API may have answered, and billed, it"
)


def noted(record: JobRecord, kind: JobErrorType, message: str, attempt: int) -> list[AttemptError]:
    """The timeline with an attempt whose call may have reached the API but whose answer was
    not stored: without it, a job sent twice reads as if it had been sent once."""
    return logged(record, JobError(type=kind, message=message), attempt)


def ended(record: JobRecord, status: JobStatus, **fields: Any) -> JobRecord:
    """Terminal: `finished_at` now, nothing scheduled; an error joins the attempt timeline."""
    if isinstance(fields.get("error"), JobError):
        fields["attempt_errors"] = logged(record, fields["error"], fields.get("attempts"))
    # An ended job waits for nothing: a stale reason (`batch_pool`, `budget`) would mislead.
    update = {"finished_at": utcnow(), "next_attempt_at": None, "waiting_reason": None}
    return record.model_copy(update={"status": status, **update, **fields})


def begun(record: JobRecord, *, lost_because: JobError | None = None) -> JobRecord:
    """queued/retrying/in_progress → in_progress with one more attempt; a cancel request wins.

    A record still `in_progress` when an attempt begins means the attempt before it never
    recorded an outcome (its worker was killed, or lost Redis, mid-call): it is noted `lost`
    (and stays charged, as the call may have been billed), `lost_because` when the worker knows
    why (it gave up an answer it could not store)."""
    lost = _lost(record, lost_because)
    if record.cancel_requested:
        return ended(record, JobStatus.CANCELED, **lost)
    return record.model_copy(
        update={
            "status": JobStatus.IN_PROGRESS,
            "attempts": record.attempts + 1,
            "started_at": record.started_at or utcnow(),
            "next_attempt_at": None,
            "waiting_reason": None,
            **lost,
        }
    )


def _lost(record: JobRecord, why: JobError | None = None) -> dict[str, Any]:
    """`attempt_errors` with the in-progress attempt noted `lost`; nothing when not in progress."""
    if record.status is not JobStatus.IN_PROGRESS or record.attempts == 0:
        return {}
    why = why or JobError(type=JobErrorType.LOST, message=LOST_MESSAGE)
    return {"attempt_errors": logged(record, why, record.attempts)}


def exhausted(record: JobRecord) -> JobError:
    """Why a job with no attempts left ends `failed` without another call: the last attempt's
    error; or, that attempt never having recorded an outcome (still `in_progress`), that it was
    lost mid-call, so the timeline does not pin an earlier attempt's error on it."""
    message = "no attempts left"
    if record.status is JobStatus.IN_PROGRESS:
        message = f"{message}; the last one: {LOST_MESSAGE}"
    elif record.error is not None:
        return record.error
    return JobError(type=JobErrorType.ATTEMPTS_EXHAUSTED, message=message)


def retry_scheduled(record: JobRecord, *, next_at: datetime, error: JobError) -> JobRecord:
    """→ retrying at `next_at`; `expired` when the deadline comes first, `canceled` if asked."""
    if record.cancel_requested:
        return ended(record, JobStatus.CANCELED, error=error)
    if record.deadline is not None and next_at >= record.deadline:
        return ended(record, JobStatus.EXPIRED, error=error)
    return record.model_copy(
        update={
            "status": JobStatus.RETRYING,
            "next_attempt_at": next_at,
            "error": error,
            "attempt_errors": logged(record, error),
        }
    )


def requeued(record: JobRecord, *, error: JobError | None) -> JobRecord:
    """Back to queued, the attempt not charged (fleet paused, or a wait handed back)."""
    if record.cancel_requested:
        return ended(record, JobStatus.CANCELED)
    refund = 1 if record.status is JobStatus.IN_PROGRESS else 0
    return record.model_copy(
        update={
            "status": JobStatus.QUEUED,
            "attempts": max(0, record.attempts - refund),
            "error": error if error is not None else record.error,
        }
    )


def crashed(record: JobRecord, *, error: JobError, backoff: Callable[[int], float]) -> JobRecord:
    """Task code raised: that counts as an attempt (once); retrying, or failed when spent."""
    attempts = record.attempts if record.status is JobStatus.IN_PROGRESS else record.attempts + 1
    if record.cancel_requested:
        return ended(record, JobStatus.CANCELED, attempts=attempts, error=error)
    if attempts >= record.max_attempts:
        return ended(record, JobStatus.FAILED, attempts=attempts, error=error)
    return record.model_copy(
        update={
            "status": JobStatus.RETRYING,
            "attempts": attempts,
            "next_attempt_at": utcnow() + timedelta(seconds=backoff(attempts)),
            "error": error,
            "attempt_errors": logged(record, error, attempts),
        }
    )


def released(record: JobRecord, *, cut_attempt: int | None = None) -> JobRecord | None:
    """A worker stopped mid-attempt: back to queued. The attempt its run began (`cut_attempt`),
    whose call may have reached the API, is noted `cut` and not charged. An attempt in progress
    that the run did not begin was an earlier worker's, lost: noted `lost`, and still charged."""
    if record.status is not JobStatus.IN_PROGRESS:
        return ended(record, JobStatus.CANCELED) if record.cancel_requested else None
    if cut_attempt is None or cut_attempt != record.attempts:
        update = _lost(record)
    elif record.cancel_requested:  # the operator's cancel cut the call: it stays counted
        update = {"attempt_errors": noted(record, JobErrorType.CUT, CANCELED_MESSAGE, cut_attempt)}
    else:
        update = {
            "attempts": max(0, record.attempts - 1),
            "attempt_errors": noted(record, JobErrorType.CUT, CUT_MESSAGE, cut_attempt),
        }
    if record.cancel_requested:
        return ended(record, JobStatus.CANCELED, **update)
    return record.model_copy(update={"status": JobStatus.QUEUED, **update})


def cancel_asked(record: JobRecord) -> JobRecord:
    """Queued or retrying: canceled now. In progress: flagged for the worker to honour."""
    if record.status in (JobStatus.QUEUED, JobStatus.RETRYING):
        return ended(record, JobStatus.CANCELED)
    return record.model_copy(update={"cancel_requested": True})


def reopened(record: JobRecord) -> JobRecord | None:
    """failed/expired → queued with attempts reset (`msgq retry`); None when a retry could not
    change the outcome (see `retry_policy`). The deadline that passed is dropped with it."""
    if not retry_verdict(record).allowed:
        return None
    return record.model_copy(
        update={
            "status": JobStatus.QUEUED,
            "attempts": 0,
            "started_at": None,
            "finished_at": None,
            "next_attempt_at": None,
            "error": None,
            "cancel_requested": False,
            "deadline": None,
            "waiting_reason": None,
        }
    )
