"""The dashboard (/ui): its indexes and counters, sessions and CSRF, pages, filters, escaping."""

from __future__ import annotations

import functools
from datetime import timedelta
from typing import Any

from redis.asyncio import Redis

from schemas import JobError, JobStatus
from worker import records
from worker.client import Client
from worker.fleet_stats import last_hour
from worker.keys import model_jobs_key, spec_key, status_jobs_key
from worker.store import JobStore


def text_request(text: str = "Hello", model: str = "claude-haiku-4-5") -> dict[str, Any]:
    return {"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": text}]}


async def _members(redis: Redis, key: str) -> set[str]:
    return {m.decode() for m in await redis.zrange(key, 0, -1)}


async def test_status_and_model_indexes_follow_the_record(
    client: Client, store: JobStore, redis: Redis
) -> None:
    """A job sits in exactly one status index at each step, and in its model's index."""
    job = await client.submit(text_request(), job_id="ix-1", tenant="acme")
    assert job.id in await _members(redis, status_jobs_key("queued"))
    assert job.id in await _members(redis, model_jobs_key("claude-haiku-4-5"))
    await store.update(job.id, records.begun)
    error = JobError(type="invalid_request_error", message="bad", status_code=400)
    await store.update(job.id, lambda r: records.ended(r, JobStatus.FAILED, error=error))
    where = {s.value for s in JobStatus if job.id in await _members(redis, status_jobs_key(s))}
    assert where == {"failed"}
    await store.keep_spec(job.id, {"request": text_request(), "tenant": "acme"})
    assert await client.retry(job.id) is not None
    where = {s.value for s in JobStatus if job.id in await _members(redis, status_jobs_key(s))}
    assert where == {"queued"}
    assert not await redis.exists(spec_key(job.id))


async def test_terminal_writes_count_per_minute_fleet_and_tenant(
    client: Client, store: JobStore, redis: Redis
) -> None:
    """Each terminal write adds one to this minute's counter, fleet-wide and for its tenant."""
    for n in range(3):
        job = await client.submit(text_request(f"n{n}"), tenant="acme")
        await store.update(job.id, lambda r: records.ended(r, JobStatus.SUCCEEDED))
    fleet = await last_hour(redis, ["succeeded", "failed"])
    mine = await last_hour(redis, ["succeeded"], tenant="acme")
    assert fleet["succeeded"][-1] == 3 and sum(fleet["failed"]) == 0
    assert mine["succeeded"][-1] == 3 and len(mine["succeeded"]) == 60


async def test_attempt_errors_keep_each_failed_attempt(client: Client, store: JobStore) -> None:
    """Every retry and the final failure add an entry to the record's attempt timeline."""
    job = await client.submit(text_request())
    for n in range(2):
        await store.update(job.id, records.begun)
        error = JobError(type="overloaded_error", message=f"busy {n}", status_code=529)
        later = records.utcnow() + timedelta(seconds=1)
        retry = functools.partial(records.retry_scheduled, next_at=later, error=error)
        await store.update(job.id, retry)
    await store.update(job.id, records.begun)
    final = JobError(type="invalid_request_error", message="no", status_code=400)
    await store.update(job.id, lambda r: records.ended(r, JobStatus.FAILED, error=final))
    record = await client.get(job.id)
    timeline = [(e.attempt, e.status_code, e.message) for e in record.attempt_errors]
    assert timeline == [(1, 529, "busy 0"), (2, 529, "busy 1"), (3, 400, "no")]
