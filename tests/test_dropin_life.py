"""A drop-in call's life: the caller's connection is its patience, pings while it waits, and
what a failure mid-stream looks like (the HTTP layer, seen with plain httpx and the SDK)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anthropic
import httpx
import pytest

from msgq.jobs.store import JobStore
from msgq.settings import Settings
from msgq.tenancy.budgets import Budgets
from msgq.tenancy.tenants import TenantConfig
from schemas import JobRecord, JobStatus
from tests.conftest import KEYS, SAMPLES, Sim, StartWorker, eventually
from tests.test_dropin_sdk import ended, sdk, stored

TEXT: dict[str, Any] = json.loads((SAMPLES / "requests" / "text.json").read_text())


@pytest.fixture
def api_settings(api_settings: Settings) -> Settings:
    return api_settings.model_copy(update={"dropin_ping_s": 0.2})


async def status_is(store: JobStore, job_id: str, *wanted: JobStatus) -> JobRecord:
    found: dict[str, JobRecord] = {}

    async def check() -> bool:
        record = await store.get(f"tenant-a:{job_id}")
        if record is not None and record.status in wanted:
            found["r"] = record
        return "r" in found

    await eventually(check)
    return found["r"]


async def hang_up(call: asyncio.Task[Any]) -> None:
    """Cancel the request: httpx closes its connection, which the server sees as a hang-up."""
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


async def test_a_caller_gone_before_the_job_started_cancels_it(
    http: httpx.AsyncClient, store: JobStore, sim: Sim
) -> None:
    """No worker: the job waits queued; the caller hangs up; the job ends canceled, unsent."""
    headers = {"Idempotency-Key": "gone-early"}
    call = asyncio.create_task(http.post("/v1/messages", json=TEXT, headers=headers))
    await status_is(store, "gone-early", JobStatus.QUEUED)
    await hang_up(call)
    record = await status_is(store, "gone-early", JobStatus.CANCELED)
    assert record.attempts == 0 and sim.received == 0


async def test_a_caller_gone_after_the_start_leaves_a_record_billed_once(
    http: httpx.AsyncClient, store: JobStore, sim: Sim, start_worker: StartWorker, redis: Any
) -> None:
    """The job is in progress when the caller hangs up: it succeeds, one call, cost counted
    once in the tenant's spend."""
    sim.script({"delay_s": 1.0})
    await start_worker()
    headers = {"Idempotency-Key": "gone-late"}
    call = asyncio.create_task(http.post("/v1/messages", json=TEXT, headers=headers))
    await status_is(store, "gone-late", JobStatus.IN_PROGRESS)
    await hang_up(call)
    record = await status_is(store, "gone-late", JobStatus.SUCCEEDED)
    assert record.attempts == 1 and sim.received == 1 and record.cost_usd
    cost = record.cost_usd

    async def counted() -> bool:  # the ledger settles just after the record is stored
        usage = await Budgets(redis, KEYS).usage("tenant-a", TenantConfig())
        return bool(usage["spent_today_usd"] == pytest.approx(cost))

    await eventually(counted)


async def test_pings_while_queued_then_the_events_in_the_api_order(
    http: httpx.AsyncClient, store: JobStore, start_worker: StartWorker
) -> None:
    """No worker yet: the stream opens with pings; once one runs, one message_start, the
    content, message_delta and message_stop, and nothing after."""
    body = {**TEXT, "stream": True}
    async with http.stream("POST", "/v1/messages", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = response.aiter_text()
        first = await anext(chunks)
        assert first.startswith("event: ping\n")
        await start_worker()
        text = first + "".join([chunk async for chunk in chunks])
        job_id = response.headers["msgq-job-id"]
    names = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    started = [n for n in names if n != "ping"]
    assert started[0] == "message_start" and names.count("message_start") == 1
    assert started[1:4] == ["content_block_start", "content_block_delta", "content_block_delta"]
    assert started[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert (await ended(store, job_id)).status is JobStatus.SUCCEEDED


async def test_a_retry_before_any_content_is_invisible_to_the_stream(
    api_server: str, store: JobStore, sim: Sim, start_worker: StartWorker
) -> None:
    """A 529, then the answer: one stream, its final message is the record (two attempts)."""
    sim.script({"status": 529, "error_type": "overloaded_error"})
    await start_worker()
    async with sdk(api_server) as client, client.messages.stream(**TEXT) as stream:
        final = await stream.get_final_message()
        job_id = stream.response.headers["msgq-job-id"]
    record = await ended(store, job_id)
    assert record.attempts == 2 and final.model_dump() == stored(record)


async def test_a_failure_mid_content_ends_the_stream_with_an_error_event(
    api_server: str, store: JobStore, sim: Sim, start_worker: StartWorker
) -> None:
    """An overload halfway through the text: the caller's stream ends with the API's `error`
    event; msgq retries the job to a stored Message, no second message_start is ever sent."""
    sim.script({"stream_error": "overloaded_error", "output_tokens": 60, "ms_per_token": 1})
    await start_worker()
    async with sdk(api_server) as client, client.messages.stream(**TEXT) as stream:
        job_id = stream.response.headers["msgq-job-id"]
        with pytest.raises(anthropic.APIStatusError) as caught:
            await stream.get_final_message()
    assert "overloaded" in str(caught.value.body)
    record = await ended(store, job_id)
    assert record.status is JobStatus.SUCCEEDED and record.attempts == 2 and sim.received == 2


async def test_request_id_on_the_existing_endpoints(http: httpx.AsyncClient) -> None:
    """/v1/jobs and the Batches routes answer with a request-id too (msgq's own)."""
    for response in (
        await http.get("/v1/jobs/no-such-job"),
        await http.get("/v1/messages/batches"),
        await http.post("/v1/jobs", json={"request": TEXT}),
    ):
        assert response.headers["request-id"].startswith("req_msgq_")
    assert (await http.get("/v1/jobs/no-such-job")).headers["request-id"] != response.headers[
        "request-id"
    ]
