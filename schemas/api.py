"""Bodies of msgq's own HTTP API (`/v1/jobs`) and its error shape."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.jobs import (
    BETA_PATTERN,
    JOB_ID_PATTERN,
    MAX_BETAS,
    VERSION_PATTERN,
    JobRecord,
    Lane,
    Priority,
)


class JobCreate(BaseModel):
    """`POST /v1/jobs`: a Messages request plus what msgq needs to run it."""

    model_config = ConfigDict(extra="forbid")

    request: dict[str, Any] = Field(description="a Messages API request body")
    id: str | None = Field(default=None, pattern=JOB_ID_PATTERN, description="idempotency key")
    metadata: dict[str, Any] = Field(default_factory=dict)
    deadline: AwareDatetime | None = None
    max_attempts: int | None = Field(default=None, ge=1, le=100)
    lane: Lane | None = Field(
        default=None,
        description="realtime (default), batch (Message Batches, half price, ends within 24 h) "
        "or auto (batch when the deadline leaves room for it)",
    )
    callback_url: str | None = Field(
        default=None,
        max_length=2048,
        description="POSTed the final record when the job ends (Standard Webhooks, signed)",
    )
    priority: Priority | None = Field(
        default=None,
        description="interactive, default or bulk; the tenant's default when absent",
    )
    anthropic_version: str | None = Field(
        default=None,
        pattern=VERSION_PATTERN,
        description="the API version the request was written for (else the anthropic-version "
        "header); its rules are checked and every call for the job sends it",
    )
    betas: list[Annotated[str, Field(pattern=BETA_PATTERN)]] | None = Field(
        default=None,
        max_length=MAX_BETAS,
        description="beta names sent as anthropic-beta (else the anthropic-beta header)",
    )


class JobPage(BaseModel):
    data: list[JobRecord]
    has_more: bool
    first_id: str | None
    last_id: str | None


class ErrorDetail(BaseModel):
    type: str
    message: str
    errors: list[dict[str, str]] | None = None


class ErrorBody(BaseModel):
    """The Anthropic API's error shape, which msgq's API answers in too."""

    type: str = "error"
    error: ErrorDetail
