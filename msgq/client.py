"""The producer client: validate, then enqueue atomically; get, wait and cancel by job ID."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import orjson
from pydantic import BaseModel
from redis.asyncio import Redis

from msgq import arq_format
from msgq.cluster import check_serves
from msgq.connections import connect
from msgq.errors import InvalidJobError, JobConflictError, JobNotFoundError
from msgq.jobs.endings import Endings
from msgq.jobs.ids import scoped_id
from msgq.jobs.records import build_spec, new_record, validated
from msgq.jobs.retry_policy import retry_verdict
from msgq.jobs.store import JobStore
from msgq.liveness import live_workers
from msgq.model_catalog import CatalogReader, note_unknown_model
from msgq.partitions import PartitionClients, check_partitions
from msgq.replicas import confirm_replicated
from msgq.settings import Settings
from msgq.tenancy.policy import PolicyReader
from msgq.tenancy.scheduling import placement, uses_scheduler
from msgq.token_count import count_tokens
from msgq.trace_context import trace_fields
from msgq.webhooks.targets import callback_for
from schemas import JOB_ID_PATTERN, JobRecord, JobSpec, JobStatus, Lane, Priority

_JOB_ID = re.compile(JOB_ID_PATTERN)


@dataclass(frozen=True)
class Submitted:
    """What submit() returns: `created` is False when the ID already existed (idempotent retry)."""

    id: str
    created: bool
    record: JobRecord


def new_job_id() -> str:
    """128 random bits: unguessable, so a job ID can double as a capability to read the result."""
    return "job_" + secrets.token_hex(16)


def request_sha256(request: dict[str, Any]) -> str:
    """The request's fingerprint: canonical JSON (sorted keys), so key order does not matter."""
    return hashlib.sha256(orjson.dumps(request, option=orjson.OPT_SORT_KEYS)).hexdigest()


def enqueue_payload(spec: JobSpec, enqueued_ms: int) -> bytes:
    """The arq job as JSON: the exact bytes a non-Python producer writes (see README).

    Raises InvalidJobError for what JSON cannot carry portably (integers beyond 64 bits).
    """
    kwargs = spec.model_dump(mode="json", exclude_none=True)
    try:
        payload: bytes = arq_format.job_payload(kwargs, enqueued_ms)
        return payload
    except orjson.JSONEncodeError as exc:
        msg = f"request cannot be queued as JSON: {exc}"
        raise InvalidJobError(msg, [{"loc": "request", "msg": str(exc), "type": "json"}]) from None


def check_job_id(job_id: str, tenant: str | None) -> None:
    """Refuse a caller-chosen ID that is malformed or lands in a tenant's namespace.

    A tenant's jobs are stored as `tenant:id`, so an ID `acme:order-1` submitted without a tenant
    (or for another tenant) would occupy, or collide with, acme's `order-1`: acme's idempotent
    resubmit would then be answered with that job. Only `tenant` itself may use its prefix.
    """
    if not _JOB_ID.match(job_id):
        msg = "job id must be 1-128 characters of A-Z a-z 0-9 _ . : -"
        raise InvalidJobError(msg, [{"loc": "id", "msg": msg, "type": "value_error"}])
    prefix, colon, _ = job_id.partition(":")
    if colon and prefix != tenant:
        msg = (
            f"job id {job_id!r} is in tenant {prefix!r}'s namespace (IDs with ':' are "
            f"tenant:id); submit it for tenant {prefix!r}, or choose an ID without ':'"
        )
        raise InvalidJobError(msg, [{"loc": "id", "msg": msg, "type": "value_error"}])


class Client:
    """`async with Client.from_url(url) as q: job = await q.submit(request)`."""

    def __init__(self, redis: Redis, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        if self.settings.keys.clustered:
            check_serves(redis, self.settings.keys.prefix)
        self._redis = redis
        self._store = JobStore.from_settings(redis, self.settings)
        self._endings: Endings | None = None
        self._policy = PolicyReader(redis, self.settings)
        self.catalog = CatalogReader(redis, self.settings.keys)
        self._layout_checked = False

    @classmethod
    def from_url(cls, url: str, settings: Settings | None = None) -> Self:
        settings = (settings or Settings()).model_copy(update={"redis_url": url})
        return cls(connect(settings), settings)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._endings is not None:
            await self._endings.stop()
        await self._redis.aclose()

    async def submit(
        self,
        request: dict[str, Any] | BaseModel,
        *,
        job_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        deadline: datetime | None = None,
        max_attempts: int | None = None,
        tenant: str | None = None,
        lane: Lane | str | None = None,
        priority: Priority | str | None = None,
        callback_url: str | None = None,
        anthropic_version: str | None = None,
        betas: list[str] | None = None,
        workspace_id: str | None = None,
        api_headers: dict[str, str] | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
    ) -> Submitted:
        """Validate, then enqueue. Raises InvalidJobError (nothing enqueued) for a bad request,
        JobConflictError when `job_id` already holds a different request.

        `anthropic_version` and `betas`: what the request was written for; every call made for
        the job sends them (None: the fleet's MSGQ_ANTHROPIC_VERSION / MSGQ_ANTHROPIC_BETA).
        The request is checked against that version's rules and the Models API's limits.
        `api_headers`: any other `anthropic-*` headers every call for the job sends (e.g.
        `anthropic-user-profile-id`), names in lower case.
        The job joins the trace of `traceparent` if given and valid, else of the active
        OpenTelemetry span.
        """
        if job_id is not None:
            check_job_id(job_id, tenant)
        body = self._request_dict(request)
        models = await self.catalog.limits()
        checked = validated(
            body,
            max_image_bytes=self.settings.max_image_bytes,
            anthropic_version=anthropic_version or self.settings.anthropic_version,
            models=models,
        )
        note_unknown_model(checked.model, models)
        policy = await self._policy.get()  # the fleet's, not this process's environment
        if priority is None and tenant is not None:
            priority = policy.tenants.get(tenant).default_priority
        callback_url = await callback_for(
            callback_url,
            tenant=tenant,
            settings=self.settings,
            tenants=policy.tenants,
            fleet_signs=policy.webhook_signing,
        )
        spec = build_spec(
            body,
            metadata=metadata,
            deadline=deadline,
            max_attempts=max_attempts,
            validate=False,
            lane=lane,
            priority=priority,
            tenant=tenant,
            callback_url=callback_url,
            anthropic_version=anthropic_version,
            betas=betas,
            workspace_id=workspace_id,
            api_headers=api_headers,
            trace=trace_fields(traceparent, tracestate),
        )
        internal_id = scoped_id(tenant, job_id or new_job_id())
        now_ms = int(time.time() * 1000)
        payload = enqueue_payload(spec, now_ms)  # first: it refuses what JSON cannot carry
        record = new_record(
            internal_id,
            spec,
            created_at=datetime.fromtimestamp(now_ms / 1000, UTC),
            default_max_attempts=self.settings.max_attempts,
            tenant=tenant,
        ).model_copy(update={"request_sha256": request_sha256(spec.request)})
        placed = (
            placement(checked, record.priority, tenant, self.settings, spec.deadline)
            if policy.scheduler and uses_scheduler(self.settings, spec.lane)
            else None
        )
        await self.check_layout()  # a producer with another MSGQ_PARTITIONS: refused
        existing = await self._store.create(record, payload, now_ms, placed)
        if existing is not None and existing.request_sha256 not in (None, record.request_sha256):
            # Records from before this field, or from raw-Redis producers, carry no hash.
            msg = f"job {job_id!r} already exists with a different request"
            raise JobConflictError(msg)
        if self.settings.submit_min_replicas:  # acknowledged only once replicas hold it
            await confirm_replicated(
                self._redis,
                self.settings.keys,
                internal_id,
                replicas=self.settings.submit_min_replicas,
                timeout_ms=self.settings.submit_replica_timeout_ms,
            )
        return Submitted(internal_id, existing is None, existing or record)

    @staticmethod
    def _request_dict(request: dict[str, Any] | BaseModel) -> dict[str, Any]:
        if isinstance(request, BaseModel):
            return request.model_dump(mode="json", exclude_unset=True)
        if not isinstance(request, dict):
            msg = "request must be a JSON object"
            raise InvalidJobError(msg, [{"loc": "request", "msg": msg, "type": "dict_type"}])
        return request

    async def check_layout(self) -> None:
        """Raise PartitionCountError when MSGQ_PARTITIONS is not the count this deployment's
        jobs were written with (`msgq.partitions`); checked once a client."""
        if not self._layout_checked:
            keys = self.settings.keys
            await check_partitions(PartitionClients(self._redis, keys), keys)
            self._layout_checked = True

    async def count_tokens(
        self,
        request: dict[str, Any] | BaseModel,
        *,
        anthropic_version: str | None = None,
        betas: list[str] | None = None,
    ) -> int:
        """The API's count of the request's input tokens (`POST /v1/messages/count_tokens`):
        free, with its own rate limits, so it takes nothing from the Messages buckets."""
        body = self._request_dict(request)
        return await count_tokens(
            self.settings, body, anthropic_version=anthropic_version, betas=betas
        )

    async def get(self, job_id: str) -> JobRecord:
        await self.check_layout()  # another count would look in the wrong partition
        record = await self._store.get(job_id)
        if record is None:
            msg = f"no job {job_id!r} (unknown, or past its retention)"
            raise JobNotFoundError(msg)
        return record

    async def wait(self, job_id: str, *, timeout: float = 60.0) -> JobRecord:  # noqa: ASYNC109  # SPEC §2.1 fixes this signature
        """Wait on the done channel until the job is terminal; raises TimeoutError with the job
        still running."""
        await self.check_layout()
        if self._endings is None:
            self._endings = Endings(self._redis, self._store)
        record = await self._endings.wait(job_id, timeout)
        if record is None:
            msg = f"no job {job_id!r} (unknown, or past its retention)"
            raise JobNotFoundError(msg)
        if not record.status.terminal:
            msg = f"job {job_id} still {record.status.value} after {timeout:g}s"
            raise TimeoutError(msg)
        return record

    async def cancel(self, job_id: str) -> JobRecord:
        """Queued/retrying: canceled at once. In progress: the worker aborts the call."""
        await self.check_layout()
        record = await self._store.cancel(job_id)
        if record is None:
            msg = f"no job {job_id!r}"
            raise JobNotFoundError(msg)
        return record

    async def retry(self, job_id: str) -> JobRecord | None:
        """Re-run a failed job with its original request (None: not failed, or not retryable)."""

        def payload(kwargs: dict[str, Any]) -> bytes:
            return enqueue_payload(JobSpec.model_validate(kwargs), int(time.time() * 1000))

        await self.check_layout()
        return await self._store.reopen(job_id, payload)

    async def retry_explained(self, job_id: str) -> tuple[JobRecord | None, str]:
        """`retry`, and when nothing was requeued, why not, in a sentence (JobNotFoundError
        when there is no such job)."""
        fresh = await self.retry(job_id)
        if fresh is not None:
            return fresh, ""
        verdict = retry_verdict(await self.get(job_id))
        if not verdict.allowed:
            return None, verdict.reason
        return None, "its request is no longer kept (a job that ended before this version)"

    async def fleet_anthropic_version(self) -> str:
        """The API version the workers send for a job that names none (their
        MSGQ_ANTHROPIC_VERSION as published; this process's before any worker has run)."""
        return (await self._policy.get()).anthropic_version

    async def live_workers(self) -> int:
        """Workers seen on this Redis lately (0: a submitted job would wait for one)."""
        return await live_workers(self._redis, self.settings.keys)

    async def list(self, *, status: JobStatus | None = None, limit: int = 100) -> list[JobRecord]:
        await self.check_layout()
        records, _ = await self._store.page(status=status, limit=limit)
        return records
