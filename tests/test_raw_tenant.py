"""A raw producer's job that names a tenant is one job everywhere: stored, scheduled, billed and
readable through the tenant's API as `tenant:id` (issue 24, item 9)."""

from __future__ import annotations

import json
import time

import httpx
from redis.asyncio import Redis

from msgq.client import Client
from msgq.jobs.rehome import rehome
from msgq.jobs.store import JobStore
from msgq.settings import Settings
from schemas import JobStatus
from tests.conftest import KEYS, Sim, StartWorker, eventually, zcard_parts

BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "Hello"}],
}


async def test_a_raw_job_naming_a_tenant_is_stored_as_that_tenants_job(
    settings: Settings,
    redis: Redis,
    client: Client,
    sim: Sim,
    start_worker: StartWorker,
    api: httpx.AsyncClient,
) -> None:
    payload = {"t": 1, "f": "run_message", "a": [], "et": int(time.time() * 1000)}
    payload["k"] = {"request": BODY, "tenant": "tenant-a"}
    await redis.set(KEYS.arq_job_key("order-44"), json.dumps(payload))
    await redis.zadd(settings.keys.for_job("order-44").queue, {"order-44": int(time.time() * 1000)})
    await start_worker()

    async def recorded() -> bool:  # a raw job's record is written when a worker takes it
        return await redis.exists(KEYS.record_key("tenant-a:order-44")) == 1

    await eventually(recorded)
    record = await client.wait("tenant-a:order-44", timeout=20)
    assert record.status is JobStatus.SUCCEEDED and record.tenant == "tenant-a"
    assert await redis.exists(KEYS.record_key("order-44")) == 0  # no second, tenant-less record
    answer = await api.get("/v1/jobs/order-44")  # tenant-a's key
    assert answer.status_code == 200 and answer.json()["status"] == "succeeded"
    assert sim.received == 1


async def test_a_rehome_cut_short_is_finished_by_the_next_pick_up(
    settings: Settings, redis: Redis, client: Client
) -> None:
    """A crash of the two-step rehome after its first step left the payload under the new ID
    and no queue entry: the old entry's next pick-up dropped the job for good. One step now,
    and the next pick-up queues it (once: a second rehome adds no second entry)."""
    store = JobStore.from_settings(redis, settings)
    payload = json.dumps({"t": 1, "f": "run_message", "a": [], "k": {"request": BODY}}).encode()
    new_id = "tenant-a:order-46"
    new_queue = settings.keys.for_job(new_id).queue
    await redis.set(KEYS.arq_job_key(new_id), payload)  # what the crash left
    await redis.zadd(settings.keys.for_job("order-46").queue, {"order-46": 1})
    await redis.set(KEYS.arq_job_key("order-46"), payload)
    assert await rehome(store, "order-46", new_id, payload)
    assert await redis.zscore(new_queue, new_id) is not None
    assert not await redis.exists(KEYS.arq_job_key("order-46"))
    assert await rehome(store, "order-46", new_id, payload)  # again: still one entry
    assert await zcard_parts(redis, lambda k: k.queue) == 1

    ended = (await client.submit(BODY, job_id="order-47", tenant="tenant-a")).id
    await redis.zrem(settings.keys.for_job(ended).queue, ended)
    await redis.delete(KEYS.arq_job_key(ended))  # it ran: only its record is left
    assert not await rehome(store, "order-47", ended, payload)
    assert not await redis.exists(KEYS.arq_job_key(ended))  # nothing queued twice
