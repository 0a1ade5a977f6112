"""The dashboard (/ui): its indexes and counters, sessions and CSRF, pages, filters, escaping."""

from __future__ import annotations

import base64
import functools
import io
import re
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image
from pydantic import SecretStr
from redis.asyncio import Redis

from msgq.client import Client
from msgq.fleet_stats import last_hour
from msgq.http.app import create_app
from msgq.http.ui.queries import JobFilter, find_jobs
from msgq.jobs import records
from msgq.jobs.store import JobStore
from msgq.settings import Settings
from msgq.tenancy.budgets import Budgets
from schemas import JobError, JobStatus
from tests.conftest import KEY_A, KEY_B, KEYS, Sim, StartWorker, eventually
from tests.images import image_block, image_bytes
from worker.ratelimit import Limits, RateLimiter


def now_ms() -> int:
    return int(time.time() * 1000)


def text_request(text: str = "Hello", model: str = "claude-haiku-4-5") -> dict[str, Any]:
    return {"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": text}]}


async def _members(redis: Redis, key: str) -> set[str]:
    return {m.decode() for m in await redis.zrange(key, 0, -1)}


async def test_status_and_model_indexes_follow_the_record(
    client: Client, store: JobStore, redis: Redis
) -> None:
    """A job sits in exactly one status index at each step, and in its model's index."""
    job = await client.submit(text_request(), job_id="ix-1", tenant="acme")
    part = KEYS.for_job(job.id)  # the job's partition keeps the indexes naming it
    assert job.id in await _members(redis, part.status_jobs_key("queued"))
    assert job.id in await _members(redis, part.model_jobs_key("claude-haiku-4-5"))
    await store.update(job.id, records.begun)
    error = JobError(type="api_error", message="bad", status_code=500)
    await store.update(job.id, lambda r: records.ended(r, JobStatus.FAILED, error=error))
    where = {s.value for s in JobStatus if job.id in await _members(redis, part.status_jobs_key(s))}
    assert where == {"failed"}
    await store.keep_spec(job.id, {"request": text_request(), "tenant": "acme"})
    assert await client.retry(job.id) is not None
    where = {s.value for s in JobStatus if job.id in await _members(redis, part.status_jobs_key(s))}
    assert where == {"queued"}
    assert not await redis.exists(KEYS.spec_key(job.id))


async def test_terminal_writes_count_per_minute_fleet_and_tenant(
    client: Client, store: JobStore, redis: Redis
) -> None:
    """Each terminal write adds one to this minute's counter, fleet-wide and for its tenant."""
    for n in range(3):
        job = await client.submit(text_request(f"n{n}"), tenant="acme")
        await store.update(job.id, lambda r: records.ended(r, JobStatus.SUCCEEDED))
    fleet = await last_hour(redis, KEYS, ["succeeded", "failed"])
    mine = await last_hour(redis, KEYS, ["succeeded"], tenant="acme")
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


# ---------------------------------------------------------------- the dashboard over HTTP

ADMIN_KEY = "admin-key-0123456789"


@pytest.fixture
def ui_settings(api_settings: Settings) -> Settings:
    return api_settings.model_copy(update={"admin_keys": SecretStr(ADMIN_KEY)})


@pytest.fixture
async def ui(ui_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process over https (so the cookie is Secure), signed in as nobody yet."""
    app = create_app(ui_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://msgq.test") as http:
            yield http


def field(page: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]+)"', page)
    assert found, f"no {name} field"
    return found.group(1)


async def sign_in(http: httpx.AsyncClient, key: str) -> str:
    """Sign in through the form; returns the CSRF token of the session."""
    form = await http.get("/ui/login")
    response = await http.post(
        "/ui/login", data={"login_token": field(form.text, "login_token"), "api_key": key}
    )
    assert response.status_code == 303, response.text
    overview = await http.get("/ui")
    assert overview.status_code == 200
    return field(overview.text, "csrf_token")


async def test_sign_in_sets_a_strict_http_only_session_kept_in_redis(
    ui: httpx.AsyncClient, redis: Redis, client: Client
) -> None:
    """The cookie is HttpOnly, SameSite=Strict, Secure over https; the session has a TTL; no
    page carries the key."""
    form = await ui.get("/ui/login")
    response = await ui.post(
        "/ui/login", data={"login_token": field(form.text, "login_token"), "api_key": KEY_A}
    )
    assert response.status_code == 303 and response.headers["location"] == "/ui"
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("msgq_ui="))
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert {"httponly", "samesite=strict", "secure", "path=/ui"} <= flags
    keys = [k async for k in redis.scan_iter(KEYS.prefix + "ui:session:*")]
    assert len(keys) == 1 and 0 < await redis.ttl(keys[0]) <= 8 * 3600
    session_id = cookie.split(";")[0].split("=", 1)[1]
    assert session_id not in keys[0].decode()  # stored under its hash
    job = await client.submit(text_request(), tenant="tenant-a")
    for path in ("/ui", "/ui/jobs", f"/ui/jobs/{job.id}", "/ui/failures", "/ui/batches"):
        page = await ui.get(path)
        assert page.status_code == 200 and KEY_A not in page.text and "tenant tenant-a" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]


async def test_wrong_key_or_stale_form_gets_no_session(ui: httpx.AsyncClient, redis: Redis) -> None:
    """A wrong key gets the form again (401); a post without the form's token is refused."""
    form = await ui.get("/ui/login")
    token = field(form.text, "login_token")
    wrong = await ui.post("/ui/login", data={"login_token": token, "api_key": "nope-nope-nope"})
    assert wrong.status_code == 401 and "not accepted" in wrong.text
    forged = await ui.post("/ui/login", data={"login_token": "forged", "api_key": KEY_A})
    assert forged.status_code == 403
    assert [k async for k in redis.scan_iter(KEYS.prefix + "ui:session:*")] == []
    assert (await ui.get("/ui")).status_code == 303


async def test_pages_need_a_session(ui: httpx.AsyncClient) -> None:
    """Pages redirect to sign-in; a polled fragment answers 401 and tells htmx where to go."""
    page = await ui.get("/ui/jobs")
    assert page.status_code == 303 and page.headers["location"] == "/ui/login"
    part = await ui.get("/ui/part/overview", headers={"hx-request": "true"})
    assert part.status_code == 401 and part.headers["hx-redirect"] == "/ui/login"


async def test_actions_without_the_csrf_token_are_refused(
    ui: httpx.AsyncClient, client: Client
) -> None:
    """A POST without the session's token (or with another) is 403 and changes nothing."""
    csrf = await sign_in(ui, KEY_A)
    job = await client.submit(text_request(), tenant="tenant-a")
    for data in ({}, {"csrf_token": "not-the-token"}):
        refused = await ui.post(f"/ui/jobs/{job.id}/cancel", data=data)
        assert refused.status_code == 403
    assert (await client.get(job.id)).status == JobStatus.QUEUED
    done = await ui.post(f"/ui/jobs/{job.id}/cancel", headers={"x-csrf-token": csrf})
    assert done.status_code == 303
    assert (await client.get(job.id)).status == JobStatus.CANCELED


async def test_a_tenant_sees_only_its_own_jobs(ui: httpx.AsyncClient, client: Client) -> None:
    """Another tenant's job is absent from lists and answers 404 to its page and actions."""
    theirs = await client.submit(text_request("theirs"), job_id="shared-name", tenant="tenant-a")
    mine = await client.submit(text_request("mine"), job_id="shared-name", tenant="tenant-b")
    csrf = await sign_in(ui, KEY_B)
    listing = (await ui.get("/ui/jobs")).text
    assert mine.id in listing and theirs.id not in listing
    assert (await ui.get(f"/ui/jobs/{theirs.id}")).status_code == 404
    assert (await ui.get(f"/ui/part/job/{theirs.id}")).status_code == 404
    cancel = await ui.post(f"/ui/jobs/{theirs.id}/cancel", headers={"x-csrf-token": csrf})
    assert cancel.status_code == 404
    assert (await client.get(theirs.id)).status == JobStatus.QUEUED
    forced = (await ui.get("/ui/jobs", params={"tenant": "tenant-a"})).text
    assert theirs.id not in forced  # the tenant filter is the session's, whatever is asked


async def test_resume_and_group_retry_need_an_admin(ui: httpx.AsyncClient, redis: Redis) -> None:
    """A tenant may not lift the fleet's pause; an admin may, from the overview."""
    await redis.set(KEYS.pause_key, "spend limit reached")
    csrf = await sign_in(ui, KEY_A)
    assert "Resume sending" not in (await ui.get("/ui")).text
    refused = await ui.post("/ui/resume", headers={"x-csrf-token": csrf})
    assert refused.status_code == 403 and await redis.exists(KEYS.pause_key)
    group = await ui.post("/ui/failures/retry", headers={"x-csrf-token": csrf})
    assert group.status_code == 403
    ui.cookies.clear()
    csrf = await sign_in(ui, ADMIN_KEY)
    page = (await ui.get("/ui")).text
    assert "Sending is paused" in page and "spend limit reached" in page
    assert (await ui.post("/ui/resume", headers={"x-csrf-token": csrf})).status_code == 303
    assert not await redis.exists(KEYS.pause_key)


PAYLOAD = "<script>alert('{}')</script>"


async def test_script_payloads_are_escaped_in_prompt_result_and_metadata(
    ui: httpx.AsyncClient, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """A prompt, a result and metadata holding <script> show as text, never as markup."""
    await sign_in(ui, ADMIN_KEY)
    metadata = {"note": PAYLOAD.format("metadata")}
    job = await client.submit(text_request(PAYLOAD.format("prompt")), metadata=metadata)
    page = (await ui.get(f"/ui/jobs/{job.id}")).text
    assert "&lt;script&gt;alert(&#39;prompt&#39;)&lt;/script&gt;" in page
    message = {
        "id": "msg_x",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": PAYLOAD.format("result")}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 5},
    }
    sim.script({"body": message})
    await start_worker()
    assert (await client.wait(job.id, timeout=15)).status == JobStatus.SUCCEEDED
    page = (await ui.get(f"/ui/jobs/{job.id}")).text
    listing = (await ui.get("/ui/jobs")).text
    for where in ("result", "metadata"):
        assert f"&lt;script&gt;alert(&#39;{where}&#39;)" in page
    for html in (page, listing):
        assert "<script>alert" not in html


async def _jobs(
    client: Client,
    store: JobStore,
    n: int,
    *,
    model: str = "claude-haiku-4-5",
    tenant: str = "tenant-a",
    status: JobStatus | None = None,
    error: JobError | None = None,
) -> list[str]:
    """`n` jobs moved straight to a state (the worker is not what these tests are about)."""
    ids = []
    for _ in range(n):
        job = await client.submit(text_request(model=model), tenant=tenant)
        if status is not None:
            end = functools.partial(records.ended, status=status, error=error)
            await store.update(job.id, end)
        ids.append(job.id)
    return ids


async def test_job_filters_read_the_smallest_index_and_page(
    ui: httpx.AsyncClient, client: Client, store: JobStore
) -> None:
    """Each filter is answered from its index; pages of 50 cover every match exactly once."""
    overloaded = JobError(type="overloaded_error", message="busy", status_code=529)
    bad = JobError(type="invalid_request_error", message="bad", status_code=400)
    api_error = JobError(type="api_error", message="boom", status_code=500)
    oldest = await _jobs(client, store, 1, status=JobStatus.FAILED, error=api_error)
    queued = await _jobs(client, store, 60)
    sonnet = await _jobs(client, store, 3, model="claude-sonnet-4-5")
    busy = await _jobs(client, store, 4, status=JobStatus.FAILED, error=overloaded)
    refused = await _jobs(client, store, 2, status=JobStatus.FAILED, error=bad, tenant="tenant-b")
    flt = JobFilter(status=JobStatus.FAILED, error_type="overloaded_error")
    page = await find_jobs(store.redis, KEYS, flt)
    assert {r.id for r in page.records} == set(busy) and page.index.endswith("status:failed:jobs")
    page = await find_jobs(store.redis, KEYS, JobFilter(model="claude-sonnet-4-5"))
    assert {r.id for r in page.records} == set(sonnet) and page.index_size == 3
    page = await find_jobs(store.redis, KEYS, JobFilter(tenant="tenant-b"))
    assert {r.id for r in page.records} == set(refused)
    first = await find_jobs(store.redis, KEYS, JobFilter(status=JobStatus.QUEUED))
    assert len(first.records) == 50 and first.next_cursor is not None
    rest = await find_jobs(
        store.redis, KEYS, JobFilter(status=JobStatus.QUEUED), cursor=first.next_cursor
    )
    assert len(rest.records) == 13 and rest.next_cursor is None
    assert {r.id for r in first.records + rest.records} == set(queued + sonnet)
    rare = JobFilter(error_type="api_error")
    few = await find_jobs(store.redis, KEYS, rare, budget=30)
    assert few.records == [] and few.partial and few.next_cursor  # bounded, resumable
    more = await find_jobs(store.redis, KEYS, rare, cursor=few.next_cursor, budget=100)
    assert [r.id for r in more.records] == oldest and not more.partial
    await sign_in(ui, ADMIN_KEY)
    html = (await ui.get("/ui/jobs", params={"status": "failed", "tenant": "tenant-b"})).text
    assert all(i in html for i in refused) and not any(i in html for i in busy)


async def test_expired_records_are_pruned_from_the_index(
    client: Client, store: JobStore, redis: Redis
) -> None:
    """An index entry whose record is gone is skipped and removed on the way."""
    ids = await _jobs(client, store, 3)
    await redis.delete(KEYS.record_key(ids[1]))
    page = await find_jobs(redis, KEYS, JobFilter(status=JobStatus.QUEUED))
    assert {r.id for r in page.records} == {ids[2], ids[0]}
    assert await redis.zscore(KEYS.for_job(ids[1]).status_jobs_key("queued"), ids[1]) is None


async def test_failures_grouped_and_a_group_retried(
    ui: httpx.AsyncClient, client: Client, store: JobStore
) -> None:
    """Failed jobs group by type and message; retrying a group requeues exactly its jobs."""
    busy = JobError(type="overloaded_error", message="Overloaded", status_code=529)
    bad = JobError(type="invalid_request_error", message="max_tokens: too large", status_code=400)
    group = await _jobs(client, store, 3, status=JobStatus.FAILED, error=busy)
    other = await _jobs(client, store, 2, status=JobStatus.FAILED, error=bad, tenant="tenant-b")
    for job_id in group + other:
        await store.keep_spec(job_id, {"request": text_request()})
    csrf = await sign_in(ui, ADMIN_KEY)
    page = (await ui.get("/ui/failures")).text
    assert "Overloaded" in page and "max_tokens: too large" in page
    key = re.search(r'name="group" value="([0-9a-f]+)"', page)
    assert key is not None  # the largest group comes first
    response = await ui.post("/ui/failures/retry", data={"csrf_token": csrf, "group": key.group(1)})
    assert response.status_code == 303 and "retried=3" in response.headers["location"]
    assert {(await client.get(i)).status for i in group} == {JobStatus.QUEUED}
    assert {(await client.get(i)).status for i in other} == {JobStatus.FAILED}
    ui.cookies.clear()
    await sign_in(ui, KEY_B)
    mine = (await ui.get("/ui/failures")).text
    assert "max_tokens: too large" in mine and "Overloaded" not in mine


async def test_overview_counts_chart_and_headroom(
    ui_settings: Settings, client: Client, store: JobStore, redis: Redis
) -> None:
    """Exact active counts (the tenant's own), the hour's per-minute totals and each bucket's
    level against its cap."""
    settings = ui_settings.model_copy(update={"rate_limits": {"haiku": {"rpm": 100}}})
    limiter = RateLimiter(redis, KEYS, {"haiku": Limits(rpm=100)})
    for _ in range(4):
        await limiter.acquire("claude-haiku-4-5", input_tokens=1, output_tokens=1, now_ms=now_ms())
    await _jobs(client, store, 2)
    await _jobs(client, store, 1, tenant="tenant-b")
    await _jobs(client, store, 5, status=JobStatus.SUCCEEDED)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://msgq.test") as http:
            await sign_in(http, ADMIN_KEY)
            page = (await http.get("/ui/part/overview")).text
            http.cookies.clear()
            await sign_in(http, KEY_B)
            theirs = (await http.get("/ui/part/overview")).text
    assert re.search(r'id="count-queued">3<', page) and re.search(r'id="count-queued">1<', theirs)
    assert "succeeded: 5 in the hour, 5 this minute" in page
    assert "succeeded: 0 in the hour" in theirs  # the tenant's own throughput
    row = re.search(r"haiku.*?<td>requests</td><td>(\d+)</td><td>100</td>", page, re.S)
    assert row is not None and 95 <= int(row.group(1)) <= 97


async def test_job_page_shows_thumbnails_and_the_attempt_timeline(
    ui: httpx.AsyncClient, client: Client, store: JobStore
) -> None:
    """Base64 images appear as small thumbnails on the job page only; each failed attempt is
    in the timeline."""
    big = image_bytes(size=(1200, 800))
    content = [image_block(big), {"type": "text", "text": "What is it?"}]
    request = {
        "model": "claude-haiku-4-5",
        "max_tokens": 20,
        "messages": [{"role": "user", "content": content}],
    }
    job = await client.submit(request, tenant="tenant-a")
    await store.update(job.id, records.begun)
    error = JobError(type="overloaded_error", message="Overloaded", status_code=529)
    later = records.utcnow() + timedelta(seconds=30)
    await store.update(
        job.id, functools.partial(records.retry_scheduled, next_at=later, error=error)
    )
    await sign_in(ui, KEY_A)
    page = (await ui.get(f"/ui/jobs/{job.id}")).text
    thumbs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(thumbs) == 1
    with Image.open(io.BytesIO(base64.b64decode(thumbs[0]))) as thumb:
        assert max(thumb.size) <= 160
    assert "attempt 1 failed: overloaded_error 529" in page and "next attempt" in page
    assert "data:image" not in (await ui.get("/ui/jobs")).text


async def test_batches_listed_with_progress_and_results_downloaded(
    ui: httpx.AsyncClient, client: Client, start_worker: StartWorker
) -> None:
    """A batch shows its progress from the counts; its results download once it has ended."""
    items = [{"custom_id": f"r{n}", "params": text_request(f"item {n}")} for n in range(3)]
    created = await ui.post(
        "/v1/messages/batches", json={"requests": items}, headers={"x-api-key": KEY_A}
    )
    batch_id = created.json()["id"]
    await sign_in(ui, KEY_A)
    listing = (await ui.get("/ui/batches")).text
    assert batch_id in listing and 'max="3" value="0"' in listing
    await start_worker()

    async def ended() -> bool:
        return "Download results" in (await ui.get(f"/ui/batches/{batch_id}")).text

    await eventually(ended)
    assert 'max="3" value="3"' in (await ui.get("/ui/batches")).text
    results = await ui.get(f"/ui/batches/{batch_id}/results")
    assert "attachment" in results.headers["content-disposition"]
    lines = [orjson.loads(line) for line in results.text.splitlines()]
    assert sorted(x["custom_id"] for x in lines) == ["r0", "r1", "r2"]
    assert {x["result"]["type"] for x in lines} == {"succeeded"}
    jobs = (await ui.get("/ui/jobs", params={"batch": batch_id})).text
    assert jobs.count('data-status="succeeded"') == 3
    ui.cookies.clear()
    await sign_in(ui, KEY_B)
    assert (await ui.get(f"/ui/batches/{batch_id}")).status_code == 404
    assert (await ui.get(f"/ui/batches/{batch_id}/results")).status_code == 404


async def test_upstream_429s_and_529s_are_counted_per_minute(
    client: Client, redis: Redis, sim: Sim, start_worker: StartWorker
) -> None:
    """Each 429 or 529 the API answers adds to this minute's counter for the chart."""
    sim.script(
        {"status": 429, "headers": {"retry-after": "0"}},
        {"status": 529},
        {"status": 529},
    )
    job = await client.submit(text_request())
    await start_worker()
    assert (await client.wait(job.id, timeout=20)).status == JobStatus.SUCCEEDED
    counts = await last_hour(redis, KEYS, ["429", "529", "succeeded"])
    assert (sum(counts["429"]), sum(counts["529"]), sum(counts["succeeded"])) == (1, 2, 1)


async def test_overview_shows_spend_today_against_budgets(
    ui_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    """Spend today per tenant and model, against the tenant's daily budget; a tenant sees only
    its own."""
    tenants = tmp_path / "tenants.toml"
    tenants.write_text("[tenants.tenant-a]\nbudget_usd_day = 2.0\n", encoding="utf-8")
    settings = ui_settings.model_copy(update={"tenants_file": tenants})
    budgets = Budgets(redis, KEYS)
    await budgets.record("tenant-a", 0.5, "claude-haiku-4-5")
    await budgets.record("tenant-a", 0.25, "claude-sonnet-4-5")
    await budgets.record("tenant-b", 1.5, "claude-haiku-4-5")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://msgq.test") as http:
            await sign_in(http, ADMIN_KEY)
            everyone = (await http.get("/ui/part/overview")).text
            http.cookies.clear()
            await sign_in(http, KEY_A)
            mine = (await http.get("/ui/part/overview")).text
    row = re.search(r"<th scope=\"row\">tenant-a</th>(.*?)</tr>", everyone, re.S)
    assert row is not None
    assert "$0.7500" in row.group(1) and "claude-sonnet-4-5 $0.2500" in row.group(1)
    assert "$2.00" in row.group(1) and 'value="38"' in row.group(1)  # 0.75 of 2.00
    assert "$1.50" in everyone and "tenant-b" in everyone
    assert "tenant-a" in mine and "tenant-b" not in mine


async def test_ended_status_indexes_are_trimmed_to_the_retention(
    client: Client, store: JobStore, redis: Redis
) -> None:
    """An ended job's index entry is scored by its end; entries older than the longest retention
    are trimmed by later writes, so the index does not grow for ever."""
    old = await _jobs(client, store, 1, status=JobStatus.SUCCEEDED)
    key = KEYS.for_job(old[0]).status_jobs_key("succeeded")  # its partition's copy
    ended_ms = (await redis.zscore(key, old[0])) or 0
    assert abs(ended_ms - now_ms()) < 5000
    keep_s = max(store.retention_s, store.batch_retention_s)
    await redis.zadd(key, {old[0]: now_ms() - keep_s * 1000 - 1000})  # as if ended long ago
    # A write trims the copy of its own partition: jobs until one lands in old's (IDs are
    # random: 40 at once missed it one run in 13 with 16 partitions).
    new: list[str] = []
    beside: set[str] = set()
    while not beside and len(new) < 1000:
        new += await _jobs(
            client, store, 1 if KEYS.partitions == 1 else 10, status=JobStatus.SUCCEEDED
        )
        beside = {i for i in new if KEYS.partition_of(i) == KEYS.partition_of(old[0])}
    assert beside and await _members(redis, key) == beside
