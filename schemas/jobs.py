"""What producers enqueue (JobSpec) and what msgq stores and serves per job (JobRecord)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

# Caller-supplied IDs are used in Redis keys and URLs: keep them to a safe alphabet.
JOB_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
# Header values: a date-shaped version; beta names as the API spells them (`files-api-2025-04-14`).
VERSION_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
BETA_PATTERN = r"^[A-Za-z0-9_.-]{1,100}$"
MAX_BETAS = 32
# Any other `anthropic-*` request header (e.g. `anthropic-user-profile-id`): carried as sent, so a
# header the API adds needs no msgq release. Never a credential (x-api-key, authorization).
API_HEADER_PATTERN = r"^anthropic-[a-z0-9-]{1,64}$"
API_HEADER_VALUE_PATTERN = r"^[\x20-\x7e]{0,1024}$"
CARRIED_APART = ("anthropic-version", "anthropic-beta", "anthropic-workspace-id")
MAX_API_HEADERS = 32


class JobStatus(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED})


class Lane(StrEnum):
    """How a job reaches the API: `realtime` (POST /v1/messages), `batch` (pooled into the
    Message Batches API at half price), or `auto` (batch when the deadline leaves room)."""

    REALTIME = "realtime"
    BATCH = "batch"
    AUTO = "auto"


class Priority(StrEnum):
    """Admission order under the organisation's limit: interactive before default before bulk
    (bulk keeps a floor share, so nothing starves)."""

    INTERACTIVE = "interactive"
    DEFAULT = "default"
    BULK = "bulk"


class WebhookState(BaseModel):
    """Delivery of the final record to `callback_url` (Standard Webhooks, at least once)."""

    status: str = "pending"  # pending | delivered | failed
    attempts: int = 0
    last_error: str | None = None
    delivered_at: datetime | None = None


class JobSpec(BaseModel):
    """The arq job's keyword arguments: the raw request is validated by the worker, not here."""

    model_config = ConfigDict(extra="forbid")

    request: dict[str, Any]
    metadata: dict[str, Any] = Field(default_factory=dict)
    deadline: AwareDatetime | None = None
    max_attempts: int | None = Field(default=None, ge=1, le=100)
    lane: Lane | None = None  # None: realtime
    priority: Priority | None = None  # None: the tenant's default, else `default`
    tenant: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    callback_url: str | None = Field(default=None, max_length=2048)
    # The API version and betas the request was written for; every call for the job sends
    # them. None: the fleet's MSGQ_ANTHROPIC_VERSION / MSGQ_ANTHROPIC_BETA.
    anthropic_version: str | None = Field(default=None, pattern=VERSION_PATTERN)
    betas: list[Annotated[str, Field(pattern=BETA_PATTERN)]] | None = Field(
        default=None, max_length=MAX_BETAS
    )
    workspace_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,128}$")
    api_headers: (
        dict[
            Annotated[str, Field(pattern=API_HEADER_PATTERN)],
            Annotated[str, Field(pattern=API_HEADER_VALUE_PATTERN)],
        ]
        | None
    ) = Field(default=None, max_length=MAX_API_HEADERS)

    @field_validator("api_headers")
    @classmethod
    def _not_carried_apart(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name in value or {}:
            if name in CARRIED_APART:
                msg = f"{name} has its own field"
                raise ValueError(msg)
        return value

    # W3C trace context of the producer's span: the worker continues that trace. Checked by
    # the worker, which ignores a malformed one (tracing never fails a job).
    traceparent: str | None = Field(default=None, max_length=64)
    tracestate: str | None = Field(default=None, max_length=512)


class JobUsage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class JobErrorType(StrEnum):
    """msgq's own kinds of `JobError.type`. Any other value is the API's own `error.type`
    (`overloaded_error`, `invalid_request_error`, ...), kept as the API sent it, so a type the
    API adds needs no msgq release."""

    VALIDATION = "validation_error"  # the request or the job's payload is invalid (msgq's checks)
    BUDGET_EXCEEDED = "budget_exceeded"  # the tenant's budget is spent (`on_budget = "fail"`)
    BATCH_EXPIRED = "batch_expired"  # the upstream batch expired before this request ran
    TIMEOUT = "timeout"  # no answer in time (request timeout, idle stream, the task's ceiling)
    CONNECTION = "connection_error"  # the connection failed or broke mid-stream
    INVALID_RESPONSE = "invalid_response"  # a 200 that is not a Message
    SPEND_LIMIT = "spend_limit"  # the organisation's spend limit (the fleet pauses)
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"  # a worker died during the last allowed call
    INTERNAL = "internal_error"  # a bug in task code
    # The job's queue entry vanished (found by the reconciler); or, in `attempt_errors`, an
    # attempt whose call may have reached the API but whose outcome was never stored (its
    # worker was killed or cut off from Redis; found when the job runs again).
    LOST = "lost"
    CUT = "cut"  # in `attempt_errors`: a shutdown stopped the worker mid-call (not charged)

    @classmethod
    def own(cls, value: str) -> JobErrorType | None:
        """The kind `value` names when it is msgq's own; None for the API's types."""
        kind = cls._value2member_map_.get(value)
        return kind if isinstance(kind, cls) else None


class JobError(BaseModel):
    """Why the last attempt (or the job) failed; `errors` holds a validation_error's fields."""

    type: JobErrorType | str
    message: str
    status_code: int | None = None
    request_id: str | None = None
    retryable: bool = False
    errors: list[dict[str, str]] | None = None


class AttemptError(BaseModel):
    """One failed attempt, for the record's timeline (`attempt_errors`, the last 20)."""

    attempt: int
    at: datetime
    type: str
    message: str
    status_code: int | None = None
    request_id: str | None = None  # the API's, for a support ticket about this attempt


class JobRecord(BaseModel):
    """The record a poller reads. `result` is the Message exactly as the API sent it."""

    model_config = ConfigDict(extra="ignore")

    id: str
    status: JobStatus
    attempts: int = 0
    max_attempts: int
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = None
    deadline: datetime | None = None
    model: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    result: dict[str, Any] | None = None
    usage: JobUsage | None = None
    cost_usd: float | None = None
    cost_note: str | None = None  # why cost_usd is null (e.g. no price known for the model)
    error: JobError | None = None
    upstream_request_id: str | None = None
    cancel_requested: bool = False
    progress: int | None = None  # output tokens so far, while a streamed attempt runs
    lane: Lane = Lane.REALTIME
    priority: Priority = Priority.DEFAULT
    served_by: Lane | None = None  # realtime or batch: how the answer was obtained
    upstream_batch_id: str | None = None  # the Message Batch this job rides in, while it does
    waiting_reason: str | None = None  # e.g. "budget": why a queued job is not being sent
    callback_url: str | None = None
    webhook: WebhookState | None = None
    tenant: str | None = None
    batch_id: str | None = None
    custom_id: str | None = None
    # sha256 of the canonical request JSON: a resubmission under this ID must match it.
    request_sha256: str | None = None
    attempt_errors: list[AttemptError] = Field(default_factory=list)  # oldest first
    anthropic_version: str | None = None  # as the job named it; None: the fleet's default
    betas: list[str] | None = None  # as the job named them; None: the fleet's default
    workspace_id: str | None = None  # sent as anthropic-workspace-id
    api_headers: dict[str, str] | None = None  # other anthropic-* headers, sent as named
    trace_id: str | None = None  # the producer's trace, for a link to the tracing backend
    traceparent: str | None = None  # its span, which later spans (batch results) continue
