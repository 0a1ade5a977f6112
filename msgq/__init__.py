"""msgq: a job queue for the Anthropic Messages API. The public import surface.

    from msgq import Client
    async with Client.from_url("redis://localhost:6379/0") as q:
        job = await q.submit({"model": ..., "max_tokens": ..., "messages": [...]})
        record = await q.wait(job.id, timeout=60)

`msgq` is the product: this module is its public surface (`__all__`); the core sits beside it,
the HTTP API, captioning, the CLI and the dev stack in subpackages. `worker/` is the arq worker
alone and `schemas/` the contract. Importing this needs only the base install (redis, pydantic,
orjson, arq).
"""

from msgq.client import Client, Submitted
from msgq.errors import (
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
from msgq.settings import Settings
from schemas import JobError, JobRecord, JobSpec, JobStatus, JobUsage, Message, MessageRequest

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
