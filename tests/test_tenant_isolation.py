"""Tenant isolation beyond ID prefixes: every HTTP read checks the record's own tenant, and no
caller-chosen ID (client, CLI, HTTP) may land in another tenant's `tenant:` namespace."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from redis.asyncio import Redis

from msgq.client import Client
from msgq.errors import InvalidJobError
from msgq.jobs.store import JobStore
from msgq.settings import Settings
from schemas import JobStatus
from tests.conftest import KEY_B, KEYS, SAMPLES, Sim, StartWorker, eventually, zcard_parts
from tests.test_cli import msgq
from tests.test_crash import BODY


async def test_an_untenanted_job_in_a_tenants_namespace_is_not_that_tenants(
    api: httpx.AsyncClient,
    redis: Redis,
    store: JobStore,
    settings: Settings,
    sim: Sim,
    start_worker: StartWorker,
) -> None:
    """A raw-Redis job (no tenant) with ID `tenant-b:leak` runs and is stored as such; tenant b's
    GET, events and DELETE of `leak` answer 404: the record's tenant (none) is not b's."""
    payload = {"t": 1, "f": "run_message", "a": [], "k": {"request": BODY}, "et": 0}
    await redis.set(KEYS.arq_job_key("tenant-b:leak"), json.dumps(payload))
    await redis.zadd(
        settings.keys.for_job("tenant-b:leak").queue, {"tenant-b:leak": int(time.time() * 1000)}
    )
    await start_worker()

    async def ended() -> bool:
        record = await store.get("tenant-b:leak")
        return record is not None and record.status.terminal

    await eventually(ended)
    record = await store.get("tenant-b:leak")
    assert record is not None and record.tenant is None
    assert record.status is JobStatus.SUCCEEDED  # the job is there, under b's prefix
    as_b = {"x-api-key": KEY_B}
    assert (await api.get("/v1/jobs/leak", headers=as_b)).status_code == 404
    assert (await api.get("/v1/jobs/leak?wait=0.1", headers=as_b)).status_code == 404
    assert (await api.get("/v1/jobs/leak/events", headers=as_b)).status_code == 404
    assert (await api.delete("/v1/jobs/leak", headers=as_b)).status_code == 404
    listed = (await api.get("/v1/jobs", headers=as_b)).json()
    assert listed["data"] == []


@pytest.mark.parametrize(
    ("job_id", "tenant"),
    [("tenant-b:leak", None), ("tenant-b:leak", "tenant-a"), ("a:b", None), (":x", "t")],
)
async def test_client_refuses_ids_in_another_tenants_namespace(
    client: Client, redis: Redis, job_id: str, tenant: str | None
) -> None:
    """An ID with ':' whose prefix is not the submitting tenant: InvalidJobError on `id`,
    naming the namespace; nothing is enqueued."""
    with pytest.raises(InvalidJobError, match="namespace") as caught:
        await client.submit(BODY, job_id=job_id, tenant=tenant)
    assert caught.value.errors is not None and caught.value.errors[0]["loc"] == "id"
    assert await zcard_parts(redis, lambda k: k.index_key) == 0


async def test_a_tenant_may_use_its_own_prefix(client: Client) -> None:
    """`tenant-b:x` submitted for tenant-b is accepted (stored under b's namespace)."""
    job = await client.submit(BODY, job_id="tenant-b:x", tenant="tenant-b")
    assert job.created and job.record.tenant == "tenant-b"
    assert job.id == "tenant-b:tenant-b:x"


async def test_http_and_cli_refuse_ids_in_another_namespace(
    api: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    """Tenant a's POST /v1/jobs with id `tenant-b:x`: 422 naming `id`; `msgq submit --id
    tenant-b:x` (no tenant): exit 2 with the reason; nothing enqueued."""
    answer = await api.post("/v1/jobs", json={"request": BODY, "id": "tenant-b:x"})
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["errors"][0]["loc"] == "id" and "namespace" in error["message"]
    done = await asyncio.to_thread(
        msgq, settings, "submit", str(SAMPLES / "requests" / "text.json"), "--id", "tenant-b:x"
    )
    assert done.returncode == 2 and "namespace" in done.stderr
    assert "Traceback" not in done.stderr
    assert await zcard_parts(redis, lambda k: k.index_key) == 0
