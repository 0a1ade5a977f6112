"""The dashboard says why work waits: the workers online with their slots and adaptive limits,
queued work counted by what holds it, the same reason on the job page, and no Redis key names
on any page."""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from msgq.client import Client
from msgq.http.app import create_app
from msgq.jobs import records
from msgq.jobs.store import JobStore
from msgq.settings import Settings
from schemas import JobError, JobRecord, JobStatus
from tests.conftest import KEY_A, KEYS, Sim, StartWorker, eventually
from tests.test_ui import ADMIN_KEY, sign_in, text_request
from worker.dispatch.window import announce
from worker.services import SERVICES

WORKER_ID = "0123456789abcdef" * 2


@pytest.fixture
async def dash(api_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process over https (its cookie is Secure), with an admin key; signed out."""
    settings = api_settings.model_copy(update={"admin_keys": SecretStr(ADMIN_KEY)})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://msgq.test") as http:
            yield http


async def reasons(dash: httpx.AsyncClient) -> dict[str, int]:
    """The overview's 'why queued work waits' table, as {reason key: jobs}."""
    page = (await dash.get("/ui/part/overview")).text
    rows = re.findall(r'id="wait-([a-z_]+)"><th scope="row">[^<]+</th><td>(\d+)</td>', page)
    return {key: int(n) for key, n in rows}


async def job_says(dash: httpx.AsyncClient, job_id: str) -> str:
    """The job page's 'waiting for' entry (and its live fragment must agree)."""
    found = []
    for path in (f"/ui/jobs/{job_id}", f"/ui/part/job/{job_id}"):
        page = (await dash.get(path)).text
        match = re.search(r'id="waiting"><strong>([^<]+)</strong>', page)
        found.append(match.group(1) if match else "")
    assert found[0] == found[1]
    return found[0]


def waiting_as(reason: str) -> functools.partial[JobRecord]:
    return functools.partial(_set_waiting, reason=reason)


def _set_waiting(record: JobRecord, *, reason: str) -> JobRecord:
    return record.model_copy(update={"waiting_reason": reason})


async def test_queued_work_is_counted_by_what_holds_it(
    dash: httpx.AsyncClient, client: Client, store: JobStore, redis: Redis
) -> None:
    """No worker, then each of pause, cool-down, full slots, budget, batch pool, retry back-off
    and the scheduler's rate-limit admission, on the overview and on the job page."""
    await sign_in(dash, ADMIN_KEY)
    a = await client.submit(text_request("a"), tenant="tenant-a")
    b = await client.submit(text_request("b"), tenant="tenant-a")
    assert await reasons(dash) == {"no_worker": 2}
    assert await job_says(dash, a.id) == "no worker"
    assert 'id="workers-online">0<' in (await dash.get("/ui")).text

    await announce(redis, KEYS, WORKER_ID, 8, 0, 8)  # a worker with free slots
    assert await reasons(dash) == {"capacity": 2}  # the dispatcher has not admitted them yet
    assert await job_says(dash, b.id) == "rate-limit capacity"
    await redis.set(KEYS.pause_key, "spend limit reached")
    assert await reasons(dash) == {"pause": 2}
    await redis.delete(KEYS.pause_key)
    await redis.set(KEYS.cooldown_key("haiku"), "1", px=60_000)
    assert await reasons(dash) == {"cooldown": 2}
    assert await job_says(dash, a.id) == "cool-down"
    await redis.delete(KEYS.cooldown_key("haiku"))

    # Its adaptive limit cut to 4 by 529s, and 4 running: admitted work waits for a slot.
    await announce(redis, KEYS, WORKER_ID, 8, 4, 4)
    assert await reasons(dash) == {"slots": 2}
    page = (await dash.get("/ui/part/overview")).text
    assert 'id="workers-online">1<' in page and "4 of 8" in page and "cut from 8" in page

    await store.update(a.id, waiting_as("budget"))
    await store.update(b.id, waiting_as("batch_pool"))
    c = await client.submit(text_request("c"), tenant="tenant-a")
    await store.update(c.id, records.begun)
    error = JobError(type="overloaded_error", message="Overloaded", status_code=529)
    later = records.utcnow() + timedelta(seconds=30)
    await store.update(c.id, functools.partial(records.retry_scheduled, next_at=later, error=error))
    assert await reasons(dash) == {"budget": 1, "batch_pool": 1, "retry": 1}
    assert await job_says(dash, a.id) == "budget"
    assert await job_says(dash, b.id) == "batch pool"
    assert await job_says(dash, c.id) == "retry back-off"


async def test_workers_show_a_limit_cut_by_529s_and_the_timeline_each_request_id(
    dash: httpx.AsyncClient, client: Client, sim: Sim, settings: Settings, start_worker: StartWorker
) -> None:
    """A real worker announces its adaptive limit: a 529 halves it, and the overview says so.
    The job page's timeline names the upstream request_id of the failed and the good attempt."""
    sim.script({"status": 529, "message": "Overloaded"})
    worker = await start_worker(settings.model_copy(update={"max_jobs": 8}))
    await sign_in(dash, ADMIN_KEY)
    job = await client.submit(text_request(), tenant="tenant-a")
    record = await client.wait(job.id, timeout=30)
    assert record.status is JobStatus.SUCCEEDED and record.attempts == 2
    limit = worker.ctx[SERVICES].concurrency.limit
    assert limit == 4

    async def shown() -> bool:
        page = (await dash.get("/ui/part/overview")).text
        return f"of 8</td>\n      <td>{limit} <span" in page and "cut from 8" in page

    await eventually(shown)
    request_ids = [r["request_id"] for r in sim.requests()]
    page = (await dash.get(f"/ui/jobs/{job.id}")).text
    assert len(request_ids) == 2 and all(f"request_id {i}" in page for i in request_ids)


async def test_no_page_shows_a_redis_key_name(
    dash: httpx.AsyncClient, client: Client, store: JobStore, redis: Redis
) -> None:
    """Every page and fragment, as an admin and as a tenant, with each filter: no `msgq:`."""
    assert "msgq:" not in (await dash.get("/ui/login")).text
    queued = await client.submit(text_request("q"), tenant="tenant-a")
    failed = await client.submit(text_request("f"), tenant="tenant-a")
    await store.update(failed.id, records.begun)
    error = JobError(type="api_error", message="boom", status_code=500)
    await store.update(failed.id, lambda r: records.ended(r, JobStatus.FAILED, error=error))
    await store.keep_spec(failed.id, {"request": text_request("f"), "tenant": "tenant-a"})
    items = [{"custom_id": "r0", "params": text_request("batch item")}]
    created = await dash.post(
        "/v1/messages/batches", json={"requests": items}, headers={"x-api-key": KEY_A}
    )
    batch_id = created.json()["id"]
    await redis.set(KEYS.pause_key, "spend limit reached")
    await redis.set(KEYS.cooldown_key("haiku"), "1", px=60_000)
    await announce(redis, KEYS, WORKER_ID, 8, 2)
    paths = [
        "/ui",
        "/ui/part/overview",
        "/ui/jobs",
        "/ui/part/jobs",
        "/ui/jobs?status=queued",
        "/ui/jobs?model=claude-haiku-4-5",
        "/ui/jobs?tenant=tenant-a",
        "/ui/jobs?error_type=api_error",
        f"/ui/jobs?batch={batch_id}",
        "/ui/jobs?status=nonsense",
        f"/ui/jobs/{queued.id}",
        f"/ui/part/job/{queued.id}",
        f"/ui/jobs/{failed.id}",
        f"/ui/part/job/{failed.id}",
        "/ui/jobs/no-such-job",
        "/ui/failures",
        "/ui/batches",
        f"/ui/batches/{batch_id}",
    ]
    for key in (ADMIN_KEY, KEY_A):
        dash.cookies.clear()
        await sign_in(dash, key)
        for path in paths:
            response = await dash.get(path)
            assert response.status_code in (200, 400, 404), path
            found = re.findall(r"msgq:[\w:.-]*", response.text)
            assert not found, f"{path} shows {found}"
            visible = re.sub(r"<(script|style)\b.*?</\1>", "", response.text, flags=re.S)
            assert "`" not in visible, f"{path} shows a backtick"


async def test_no_page_shows_literal_backticks(dash: httpx.AsyncClient, client: Client) -> None:
    """No worker: the overview and the job page say to start `msgq worker` with the command
    as code, not wrapped in literal backticks (issue 34, item 11)."""
    queued = await client.submit(text_request("q"), tenant="tenant-a")
    await sign_in(dash, ADMIN_KEY)
    for path in ("/ui/part/overview", f"/ui/jobs/{queued.id}", f"/ui/part/job/{queued.id}"):
        page = (await dash.get(path)).text
        assert "<code>msgq worker</code>" in page, path
        visible = re.sub(r"<(script|style)\b.*?</\1>", "", page, flags=re.S)
        assert "`" not in visible, path
