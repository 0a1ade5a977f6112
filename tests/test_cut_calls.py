"""A call that left no answer is on the record (issue 31): a worker killed mid-call leaves its
attempt counted and the record `in_progress`; the next run notes that attempt `lost`, the job
page's timeline shows it, and a job with no attempts left says its last one was lost."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import SecretStr

from msgq.client import Client
from msgq.http.app import create_app
from msgq.jobs import records
from msgq.jobs.store import JobStore
from msgq.settings import Settings
from schemas import JobStatus
from tests.conftest import Sim, StartWorker
from tests.test_ui import ADMIN_KEY, sign_in, text_request


@pytest.fixture
async def ui(api_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The dashboard in-process over https (its session cookie is Secure)."""
    app = create_app(api_settings.model_copy(update={"admin_keys": SecretStr(ADMIN_KEY)}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://msgq.test") as http:
            yield http


async def test_the_job_page_shows_an_attempt_lost_mid_call(
    ui: httpx.AsyncClient, client: Client, store: JobStore, sim: Sim, start_worker: StartWorker
) -> None:
    await sign_in(ui, ADMIN_KEY)
    job = await client.submit(text_request("lost once"))
    # What a worker SIGKILLed mid-call leaves: attempt 1 begun, no outcome, its lock lapsed.
    await store.update(job.id, records.begun)
    await start_worker()
    done = await client.wait(job.id, timeout=15)
    assert (done.status, done.attempts, sim.received) == (JobStatus.SUCCEEDED, 2, 1)
    assert [(e.attempt, e.type) for e in done.attempt_errors] == [(1, "lost")]
    page = (await ui.get(f"/ui/jobs/{job.id}")).text
    assert re.search(r"attempt 1\b[^<]*\blost\b", page)  # however the timeline words it
    assert "the worker was lost mid-call (found at the next attempt)" in page


async def test_a_lost_last_attempt_fails_the_job_saying_so(
    client: Client, store: JobStore, sim: Sim, start_worker: StartWorker
) -> None:
    """max_attempts 1, and that attempt's worker was killed mid-call: the job fails without a
    second call, and its timeline says the attempt was lost (not an earlier error, not bare
    "no attempts left")."""
    job = await client.submit(text_request("lost, last"), max_attempts=1)
    await store.update(job.id, records.begun)
    await start_worker()
    done = await client.wait(job.id, timeout=15)
    assert (done.status, done.attempts, sim.received) == (JobStatus.FAILED, 1, 0)
    [entry] = done.attempt_errors
    assert (entry.attempt, entry.type) == (1, "attempts_exhausted")
    assert entry.message == f"no attempts left; the last one: {records.LOST_MESSAGE}"
