"""msgq: a job queue for the Anthropic Messages API. The public import surface.

    from msgq import Client
    async with Client.from_url("redis://localhost:6379/0") as q:
        job = await q.submit({"model": ..., "max_tokens": ..., "messages": [...]})
        record = await q.wait(job.id, timeout=60)

This package is a thin facade: the code lives in `worker/` (the service) and `schemas/` (the
contract). Importing it needs only the base install (redis, pydantic, orjson, arq).
"""

from schemas import JobError, JobRecord, JobSpec, JobStatus, JobUsage, Message, MessageRequest
from worker.client import Client, Submitted
from worker.errors import (
    InvalidJobError,
    InvalidResponseError,
    JobNotFoundError,
    OverloadedError,
    RateLimitError,
    RejectedError,
    ServiceError,
    SpendLimitError,
    TransientError,
    UnavailableError,
    UpstreamError,
)
from worker.settings import Settings

__all__ = [
    "Client",
    "InvalidJobError",
    "InvalidResponseError",
    "JobError",
    "JobNotFoundError",
    "JobRecord",
    "JobSpec",
    "JobStatus",
    "JobUsage",
    "Message",
    "MessageRequest",
    "OverloadedError",
    "RateLimitError",
    "RejectedError",
    "ServiceError",
    "Settings",
    "SpendLimitError",
    "Submitted",
    "TransientError",
    "UnavailableError",
    "UpstreamError",
]
