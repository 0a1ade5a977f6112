"""Message Batches on msgq: a batch is a group of ordinary jobs, counted as they end."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson
from pydantic import BaseModel
from redis.asyncio import Redis

from msgq.channels import publish
from msgq.client import enqueue_payload
from msgq.jobs.records import build_spec, new_record
from msgq.jobs.store import JobStore
from msgq.settings import Settings
from msgq.tenancy.policy import PolicyReader
from msgq.tenancy.tenants import load_tenants
from msgq.webhooks.targets import callback_for
from schemas import JobRecord, JobStatus
from schemas.batches import BatchCreate, BatchPage, MessageBatch, RequestCounts

BATCH_TTL = timedelta(hours=24)  # as the API's: requests not done by then expire
RESULT_TYPES = {
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "errored",
    JobStatus.CANCELED: "canceled",
    JobStatus.EXPIRED: "expired",
}
COUNT_FIELDS = {
    "succeeded": "succeeded",
    "failed": "errored",
    "canceled": "canceled",
    "expired": "expired",
}


class BatchMeta(BaseModel):
    id: str
    tenant: str
    count: int
    created_at: datetime
    expires_at: datetime
    cancel_initiated_at: datetime | None = None
    callback_url: str | None = None  # the webhook owed when the batch ends (outbox, Lua)


async def _lrange(redis: Any, key: str, start: int, stop: int) -> list[str]:
    # redis-py types these as `Awaitable[T] | T` (sync and async share stubs): narrow here once.
    items = await cast(Awaitable[list[bytes]], redis.lrange(key, start, stop))
    return [item.decode() for item in items]


def job_id_for(tenant: str, batch_id: str, custom_id: str) -> str:
    return f"{tenant}:{batch_id}:{custom_id}"


class Batches:
    """Create, read, cancel, list and delete a tenant's batches."""

    def __init__(self, redis: Redis, store: JobStore, settings: Settings) -> None:
        self.redis = redis
        self.store = store
        self.settings = settings
        self.keys = settings.keys

    async def create(
        self,
        tenant: str,
        body: BatchCreate,
        *,
        anthropic_version: str | None = None,
        betas: list[str] | None = None,
        workspace: str | None = None,
        api_headers: dict[str, str] | None = None,
    ) -> BatchMeta:
        """Enqueue every request as a job; params are validated by the worker, as the API does
        asynchronously (an invalid one ends `errored`, the others run). Every job carries the
        create call's version, betas and other anthropic-* headers."""
        policy = await PolicyReader(self.redis, self.settings).get()
        callback_url = await callback_for(
            body.callback_url,
            tenant=tenant,
            settings=self.settings,
            fleet_signs=policy.webhook_signing,  # a callback nothing could sign: refused now
        )
        now_ms = int(time.time() * 1000)
        created = datetime.fromtimestamp(now_ms / 1000, UTC)
        meta = BatchMeta(
            id="msgbatch_" + secrets.token_hex(12),
            tenant=tenant,
            count=len(body.requests),
            created_at=created,
            expires_at=created + BATCH_TTL,
            callback_url=callback_url,
        )
        jobs = []
        # The lane its requests take: the tenant's batches_lane, else MSGQ_BATCHES_LANE
        # (realtime by default, so a batch ends in minutes; batch: half price, within 24 h).
        lane = load_tenants(self.settings.tenants_file).get(tenant).batches_lane
        lane = lane or self.settings.batches_lane
        for item in body.requests:
            spec = build_spec(
                item.params,
                deadline=meta.expires_at,
                validate=False,
                lane=lane,
                anthropic_version=anthropic_version,
                betas=betas,
                workspace_id=workspace,
                api_headers=api_headers,
            )
            record = new_record(
                job_id_for(tenant, meta.id, item.custom_id),
                spec,
                created_at=created,
                default_max_attempts=self.settings.max_attempts,
                tenant=tenant,
                batch_id=meta.id,
                custom_id=item.custom_id,
            )
            jobs.append((record, enqueue_payload(spec, now_ms)))
        ttl = int((meta.expires_at - created).total_seconds()) + self.store.batch_retention_s
        # The fleet's indexes first (the deployment's slot): a crash before the batch exists
        # leaves an entry naming nothing, which every reader skips and the reconciler drops.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self.keys.tenant_batches_key(tenant), {meta.id: now_ms})
            # Every batch's keys expire `ttl` after creation: older entries name nothing.
            pipe.zremrangebyscore(self.keys.tenant_batches_key(tenant), "-inf", now_ms - ttl * 1000)
            pipe.zadd(self.keys.batches_key, {meta.id: int(meta.expires_at.timestamp() * 1000)})
            await pipe.execute()
        # Then one transaction in the batch's partition, which holds all its jobs: the batch and
        # every job exist together or not at all, so a crash mid-create never leaves a batch
        # that cannot end, nor jobs a resubmit would run twice.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.batch_key(meta.id), meta.model_dump_json(), ex=ttl)
            pipe.rpush(
                self.keys.batch_ids_key(meta.id), *(item.custom_id for item in body.requests)
            )
            pipe.expire(self.keys.batch_ids_key(meta.id), ttl)
            pipe.hset(self.keys.batch_counts_key(meta.id), "created_at", created.isoformat())
            pipe.expire(self.keys.batch_counts_key(meta.id), ttl)
            self.store.enqueue_fresh(pipe, jobs, now_ms)
            await pipe.execute()
        await publish(self.redis, self.keys, self.keys.queue_wake, meta.id)  # idle workers look
        return meta

    async def get(self, tenant: str, batch_id: str) -> BatchMeta | None:
        raw = await self.redis.get(self.keys.batch_key(batch_id))
        meta = None if raw is None else BatchMeta.model_validate_json(raw)
        return meta if meta is not None and meta.tenant == tenant else None

    async def view(self, meta: BatchMeta, *, base_url: str) -> MessageBatch:
        """The API's batch object; counts other than `processing` appear once all have ended."""
        raw = await cast(
            Awaitable[dict[bytes, bytes]], self.redis.hgetall(self.keys.batch_counts_key(meta.id))
        )
        counts = {k.decode(): v.decode() for k, v in raw.items()}
        done = {field: int(counts.get(status, 0)) for status, field in COUNT_FIELDS.items()}
        ended = sum(done.values()) >= meta.count
        status = "ended" if ended else "canceling" if meta.cancel_initiated_at else "in_progress"
        return MessageBatch(
            id=meta.id,
            processing_status=status,
            request_counts=RequestCounts(**done) if ended else RequestCounts(processing=meta.count),
            created_at=meta.created_at,
            expires_at=meta.expires_at,
            ended_at=datetime.fromisoformat(counts["last_at"])
            if ended and "last_at" in counts
            else None,
            cancel_initiated_at=meta.cancel_initiated_at,
            results_url=f"{base_url}/v1/messages/batches/{meta.id}/results" if ended else None,
        )

    async def results(self, meta: BatchMeta) -> AsyncIterator[bytes]:
        """JSONL lines `{custom_id, result}` in submission order (callers match by custom_id)."""
        for start in range(0, meta.count, 1000):
            custom_ids = await _lrange(
                self.redis, self.keys.batch_ids_key(meta.id), start, start + 999
            )
            names = [self.keys.record_key(job_id_for(meta.tenant, meta.id, c)) for c in custom_ids]
            for custom_id, raw in zip(custom_ids, await self.redis.mget(names), strict=True):
                record = None if raw is None else JobRecord.model_validate_json(raw)
                line = {"custom_id": custom_id, "result": result_of(record)}
                yield orjson.dumps(line) + b"\n"

    async def cancel(self, meta: BatchMeta) -> BatchMeta:
        if meta.cancel_initiated_at is None:
            meta = meta.model_copy(update={"cancel_initiated_at": datetime.now(UTC)})
            await self.redis.set(self.keys.batch_key(meta.id), meta.model_dump_json())
        for start in range(0, meta.count, 500):
            custom_ids = await _lrange(
                self.redis, self.keys.batch_ids_key(meta.id), start, start + 499
            )
            await asyncio.gather(
                *(self.store.cancel(job_id_for(meta.tenant, meta.id, c)) for c in custom_ids)
            )
        return meta

    async def page(
        self, tenant: str, *, limit: int, after_id: str | None, before_id: str | None, base_url: str
    ) -> BatchPage:
        """Newest first, as the API lists them, with first_id/last_id/has_more."""
        index = self.keys.tenant_batches_key(tenant)
        if before_id is not None:
            end = await self.redis.zrevrank(index, before_id) or 0
            start = max(0, end - limit)
            raw_ids = await self.redis.zrevrange(index, start, end - 1) if end > 0 else []
            has_more = start > 0
        else:
            rank = await self.redis.zrevrank(index, after_id) if after_id else None
            start = 0 if rank is None else rank + 1
            raw_ids = await self.redis.zrevrange(index, start, start + limit)
            has_more = len(raw_ids) > limit
            raw_ids = raw_ids[:limit]
        ids = [i.decode() for i in raw_ids]
        metas = [m for m in [await self.get(tenant, i) for i in ids] if m]
        data = [await self.view(m, base_url=base_url) for m in metas]
        return BatchPage(
            data=data,
            has_more=has_more,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
        )

    async def delete(self, meta: BatchMeta) -> None:
        """Remove an ended batch and its jobs' records."""
        custom_ids = await _lrange(self.redis, self.keys.batch_ids_key(meta.id), 0, -1)
        for start in range(0, len(custom_ids), 1000):
            chunk = custom_ids[start : start + 1000]
            await self.redis.delete(
                *(self.keys.record_key(job_id_for(meta.tenant, meta.id, c)) for c in chunk)
            )
        await self.redis.delete(
            self.keys.batch_key(meta.id),
            self.keys.batch_ids_key(meta.id),
            self.keys.batch_counts_key(meta.id),
        )
        await self.redis.zrem(self.keys.tenant_batches_key(meta.tenant), meta.id)
        await self.redis.zrem(self.keys.batches_key, meta.id)

    async def overdue(self, now: datetime) -> list[str]:
        """Batches past `expires_at` that the reconciler has not yet closed."""
        ids = await self.redis.zrangebyscore(self.keys.batches_key, 0, int(now.timestamp() * 1000))
        return [i.decode() for i in ids]

    async def expire(self, batch_id: str) -> int:
        """Close an overdue batch as the API does: requests not yet ended become `expired`.
        Returns how many were expired."""
        raw = await self.redis.get(self.keys.batch_key(batch_id))
        if raw is None:
            await self.redis.zrem(self.keys.batches_key, batch_id)
            return 0
        meta = BatchMeta.model_validate_json(raw)
        expired = 0
        for start in range(0, meta.count, 500):
            custom_ids = await _lrange(
                self.redis, self.keys.batch_ids_key(meta.id), start, start + 499
            )
            for custom_id in custom_ids:
                job_id = job_id_for(meta.tenant, meta.id, custom_id)
                if await self.store.expire_job(job_id):
                    expired += 1
        await self.redis.zrem(self.keys.batches_key, batch_id)
        return expired


def result_of(record: JobRecord | None) -> dict[str, Any]:
    """One request's result, in the API's shape."""
    if record is None or not record.status.terminal:
        return {"type": "expired"}
    kind = RESULT_TYPES[record.status]
    if kind == "succeeded":
        return {"type": kind, "message": record.result}
    if kind == "errored":
        error = record.error
        error_type = (
            "invalid_request_error"
            if error and error.type == "validation_error"
            else (error.type if error else "api_error")
        )
        return {
            "type": kind,
            "error": {
                "type": "error",
                "error": {"type": error_type, "message": error.message if error else "failed"},
                "request_id": error.request_id if error else None,
            },
        }
    return {"type": kind}
