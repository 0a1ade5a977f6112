"""A raw producer's job that names a tenant is one job everywhere: stored, scheduled, billed and
readable through the tenant's API as `tenant:id` (issue 24, item 9)."""

from __future__ import annotations

import json
import time

import httpx
from redis.asyncio import Redis

from msgq.client import Client
from msgq.settings import Settings
from schemas import JobStatus
from tests.conftest import KEYS, Sim, StartWorker, eventually

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
