"""What reaches the dispatcher besides producers' placements: raw-Redis producers' jobs (the
inbox, placed into their scheduler queue here) and deadlines (a waiting job whose deadline has
passed ends `expired`, wherever in its queue it is)."""

from __future__ import annotations

import time
from typing import Any

import structlog
from pydantic import ValidationError
from redis.asyncio import Redis

from msgq.arq_format import deserialize
from msgq.channels import publish
from msgq.jobs.store import JobStore
from msgq.settings import Settings
from msgq.tenancy.scheduling import Placement, placement, resolve_priority, uses_scheduler
from msgq.tenancy.tenants import Tenants
from schemas import JobSpec, validate_request

log = structlog.get_logger("msgq.dispatcher")

INBOX_READ = 500  # raw producers' jobs placed a tick at most


class Intake:
    def __init__(self, redis: Redis, store: JobStore, settings: Settings, tenants: Tenants) -> None:
        self.redis, self.store, self.settings, self.tenants = redis, store, settings, tenants

    async def expire_due(self, limit: int = 500) -> int:
        """End `expired` the waiting jobs whose deadline has passed (a job waiting for budget
        or capacity included); entries of jobs that have left are dropped."""
        now_ms = int(time.time() * 1000)
        due = await self.redis.zrangebyscore(
            self.settings.keys.sched_deadlines, "-inf", now_ms, start=0, num=limit
        )
        for raw_id in due:
            job_id = raw_id.decode()
            waiting = await self.redis.hexists(self.settings.keys.sched_where, job_id)  # type: ignore[misc]
            if waiting and await self.store.expire_job(job_id):
                log.info("dispatcher.expired", job_id=job_id)
            await self.redis.zrem(self.settings.keys.sched_deadlines, job_id)
        return len(due)

    def ask(self, pipe: Any) -> None:
        """Queue the inbox's read on `pipe` (a tick's first look): its reply is `route_inbox`'s
        `entries`."""
        pipe.zrange(self.settings.keys.sched_inbox, 0, INBOX_READ - 1, withscores=True)

    async def route_inbox(self, entries: list[tuple[bytes, float]]) -> int:
        """Place jobs raw-Redis producers added to `msgq:sched:inbox` (payload under the usual
        `arq:job:<id>`) into their scheduler queue; an unreadable one goes to arq's queue, where
        the worker records why it failed. `entries`: the inbox as the tick's first look read
        it (`ask`)."""
        for raw_id, score in entries:
            job_id = raw_id.decode()
            payload = await self.redis.get(self.settings.keys.arq_job_key(job_id))
            placed = None if payload is None else self._placement_of(payload)
            if placed is None and payload is not None:  # its partition's queue first: another
                # slot than the inbox's; a crash between only queues it again next time
                await self.redis.zadd(self.settings.keys.for_job(job_id).queue, {job_id: score})
            async with self.redis.pipeline(transaction=True) as pipe:  # the fleet's slot
                pipe.zrem(self.settings.keys.sched_inbox, job_id)
                if placed is not None:
                    placed.write(pipe, job_id, int(score))
                elif payload is not None:
                    publish(pipe, self.settings.keys, self.settings.keys.queue_wake, job_id)
                await pipe.execute()
        return len(entries)

    def _placement_of(self, payload: bytes) -> Placement | None:
        job = deserialize(payload, max_bytes=self.settings.max_job_bytes)
        try:
            spec = JobSpec.model_validate(job.get("k") or {})
            request = validate_request(spec.request, max_image_bytes=self.settings.max_image_bytes)
        except ValidationError:
            return None
        if not uses_scheduler(self.settings, spec.lane):
            return None
        priority = resolve_priority(spec.priority, spec.tenant, self.tenants)
        return placement(request, priority, spec.tenant, self.settings, spec.deadline)
