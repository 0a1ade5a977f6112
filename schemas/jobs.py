"""What producers enqueue (JobSpec) and what msgq stores and serves per job (JobRecord)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

# Caller-supplied IDs are used in Redis keys and URLs: keep them to a safe alphabet.
JOB_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"


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


class JobSpec(BaseModel):
    """The arq job's keyword arguments: the raw request is validated by the worker, not here."""

    model_config = ConfigDict(extra="forbid")

    request: dict[str, Any]
    metadata: dict[str, Any] = Field(default_factory=dict)
    deadline: AwareDatetime | None = None
    max_attempts: int | None = Field(default=None, ge=1, le=100)


class JobUsage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class JobError(BaseModel):
    """Why the last attempt (or the job) failed; `errors` holds a validation_error's fields."""

    type: str
    message: str
    status_code: int | None = None
    request_id: str | None = None
    retryable: bool = False
    errors: list[dict[str, str]] | None = None


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
    error: JobError | None = None
    upstream_request_id: str | None = None
    cancel_requested: bool = False
    progress: int | None = None  # output tokens so far, while a streamed attempt runs
    tenant: str | None = None
    batch_id: str | None = None
    custom_id: str | None = None
    # sha256 of the canonical request JSON: a resubmission under this ID must match it.
    request_sha256: str | None = None
