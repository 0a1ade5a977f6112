"""msgq's contract: the Messages request and response, the job spec and record. No I/O."""

from schemas.capabilities import Capabilities, Prices, capabilities_for, tier_limits
from schemas.images import DEFAULT_MAX_IMAGE_BYTES
from schemas.jobs import (
    JOB_ID_PATTERN,
    TERMINAL,
    JobError,
    JobErrorType,
    JobRecord,
    JobSpec,
    JobStatus,
    JobUsage,
    Lane,
    Priority,
    WebhookState,
)
from schemas.request import MessageRequest, field_errors, summarize, validate_request
from schemas.response import Message, Usage

__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES",
    "JOB_ID_PATTERN",
    "TERMINAL",
    "Capabilities",
    "JobError",
    "JobErrorType",
    "JobRecord",
    "JobSpec",
    "JobStatus",
    "JobUsage",
    "Lane",
    "Message",
    "MessageRequest",
    "Prices",
    "Priority",
    "Usage",
    "WebhookState",
    "capabilities_for",
    "field_errors",
    "summarize",
    "tier_limits",
    "validate_request",
]
