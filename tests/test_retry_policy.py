"""Retry is offered where it can change the outcome, and the request is kept for it (issue 25)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from msgq.client import Client
from msgq.connections import connect
from msgq.http.app import create_app
from msgq.jobs.records import ended
from msgq.jobs.retry_policy import retry_verdict
from msgq.jobs.store import JobStore
from msgq.settings import Settings
from schemas import JobError, JobStatus
from tests.conftest import KEY_A, KEYS, Sim, StartWorker
from tests.test_cli import amsgq
from tests.test_fair_share import tenants_file
from tests.test_ui import sign_in
from worker.dispatch.dispatcher import Dispatcher
from worker.ratelimit import RateLimiter


@pytest.fixture
async def ui(api_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process over https (the session cookie is Secure)."""
    app = create_app(api_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://msgq.test") as http:
            yield http


BODY: dict[str, Any] = {
    "model": "claude-haiku-4-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Hello"}],
}


async def test_a_budget_failure_keeps_its_request_and_a_retry_runs_it(
    settings: Settings,
    redis: Redis,
    sim: Sim,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    """A job failed `budget_exceeded` before any attempt keeps its request; the error names the
    reservation, what was left and the budget; once the budget allows, a retry succeeds."""
    tight = tmp_path / "tight"
    tight.mkdir()
    text = '[tenants.acme]\nbudget_usd_day = 0.0001\non_budget = "fail"\n'
    custom = settings.model_copy(update={"tenants_file": tenants_file(tight, text)})
    store = JobStore.from_settings(redis, custom)
    dispatcher = Dispatcher(redis, store, custom, RateLimiter(redis, KEYS, {}))
    async with Client(connect(settings.redis_url), custom) as producer:
        job = await producer.submit(BODY, tenant="acme")
        await dispatcher.tick()
        failed = await producer.get(job.id)
        assert failed.status is JobStatus.FAILED and failed.error is not None
        assert failed.error.type == "budget_exceeded"
        assert (
            "reserves $" in failed.error.message
            and "left of its day budget" in failed.error.message
        )
        assert await redis.exists(KEYS.spec_key(job.id))
        assert retry_verdict(failed).allowed
    roomy = settings.model_copy(
        update={"tenants_file": tenants_file(tmp_path, text.replace("0.0001", "100.0"))}
    )
    await start_worker(roomy)
    async with Client(connect(settings.redis_url), roomy) as producer:
        fresh, why_not = await producer.retry_explained(job.id)
        assert fresh is not None and why_not == ""
        done = await producer.wait(job.id, timeout=20)
    assert done.status is JobStatus.SUCCEEDED
    assert sim.received == 1


async def test_a_permanent_error_is_not_retried_and_every_surface_says_why(
    settings: Settings, store: JobStore, client: Client, ui: httpx.AsyncClient
) -> None:
    """invalid_request_error: the client, `msgq retry --tenant` and `POST /v1/jobs/{id}/retry`
    refuse, each saying the error is permanent; the dashboard shows no Retry button."""
    key = {"x-api-key": KEY_A}
    created = await ui.post("/v1/jobs", json={"request": BODY, "id": "order-1"}, headers=key)
    assert created.status_code == 202
    error = JobError(type="invalid_request_error", message="bad image", status_code=400)
    await store.update("tenant-a:order-1", lambda r: ended(r, JobStatus.FAILED, error=error))
    await store.keep_spec("tenant-a:order-1", {"request": BODY})

    record, why_not = await client.retry_explained("tenant-a:order-1")
    assert record is None and "permanent" in why_not

    answer = await ui.post("/v1/jobs/order-1/retry", headers=key)
    assert answer.status_code == 409 and "permanent" in answer.text

    result = await amsgq(settings, "retry", "order-1", "--tenant", "tenant-a")
    assert result.returncode == 2
    assert "tenant-a:order-1  not retried: invalid_request_error is permanent" in result.stdout

    await sign_in(ui, KEY_A)
    page = await ui.get("/ui/jobs/tenant-a:order-1")
    assert page.status_code == 200
    assert 'id="retry"' not in page.text and "Not retryable: invalid_request_error" in page.text


async def test_an_expired_job_can_be_retried_without_its_deadline(
    store: JobStore, client: Client, redis: Redis
) -> None:
    """A job that expired waiting keeps its request; a retry requeues it with no deadline."""
    job = await client.submit(BODY, job_id="late-1")
    assert await store.expire_job(job.id)
    assert await redis.exists(KEYS.spec_key(job.id))
    fresh, why_not = await client.retry_explained(job.id)
    assert why_not == "" and fresh is not None
    assert (fresh.status, fresh.deadline) == (JobStatus.QUEUED, None)
