"""The official Python SDK, pointed at msgq's API, makes ordinary calls that become jobs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic.types import Message

from msgq.jobs.store import JobStore
from msgq.model_catalog import load_catalog, store_catalog
from msgq.settings import Settings
from schemas import JobRecord, JobStatus, Priority
from tests.conftest import KEY_A, KEY_B, KEYS, SAMPLES, Sim, StartWorker, eventually

TEXT: dict[str, Any] = json.loads((SAMPLES / "requests" / "text.json").read_text())


def sdk(url: str, key: str = KEY_A) -> anthropic.AsyncAnthropic:
    """max_retries=0: any retry a test sees is msgq's, not the SDK's."""
    return anthropic.AsyncAnthropic(base_url=url, api_key=key, max_retries=0)


def stored(record: JobRecord) -> dict[str, Any]:
    """The record's Message as the SDK's model (what its helpers build: same fields, defaults
    for the ones the API left out)."""
    assert record.result is not None
    return Message.model_validate(record.result).model_dump()


async def ended(store: JobStore, job_id: str, tenant: str = "tenant-a") -> JobRecord:
    found: dict[str, JobRecord] = {}

    async def check() -> bool:
        record = await store.get(f"{tenant}:{job_id}")
        if record is not None and record.status.terminal:
            found["r"] = record
        return "r" in found

    await eventually(check)
    return found["r"]


async def test_create_answers_the_stored_message_with_both_ids(
    api_server: str, store: JobStore, sim: Sim, start_worker: StartWorker
) -> None:
    """create: 200 with the record's Message, request-id = the API's, msgq-job-id = the job,
    priority interactive (the tenant sets none)."""
    await start_worker()
    async with sdk(api_server) as client:
        raw = await client.messages.with_raw_response.create(**TEXT)
        message = await raw.parse()
    job_id = raw.headers["msgq-job-id"]
    record = await ended(store, job_id)
    assert record.status is JobStatus.SUCCEEDED and record.priority is Priority.INTERACTIVE
    assert raw.http_response.json() == record.result
    assert message.content[0].type == "text" and message.id == record.result["id"]  # type: ignore[index]
    assert message._request_id == record.upstream_request_id is not None
    assert sim.requests()[-1]["headers"]["anthropic-version"] == "2026-10-21"


async def test_stream_relays_the_events_and_its_final_message_is_the_record(
    api_server: str, store: JobStore, sim: Sim, start_worker: StartWorker
) -> None:
    """messages.stream: text arrives as deltas; get_final_message() equals the stored result;
    the stream's `request-id` is the API's (the stream started with the API's content)."""
    sim.script({"output_tokens": 40, "ms_per_token": 2})
    await start_worker()
    async with sdk(api_server) as client, client.messages.stream(**TEXT) as stream:
        deltas = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
        job_id = stream.response.headers["msgq-job-id"]
        request_id = stream.response.headers["request-id"]
    record = await ended(store, job_id)
    assert request_id == record.upstream_request_id is not None
    assert len(deltas) > 1 and "".join(deltas) == final.content[0].text  # type: ignore[union-attr]
    assert final.model_dump() == stored(record)
    assert sim.requests()[-1]["body"]["stream"] is True


async def test_count_tokens_and_models_pass_through(
    api_server: str, settings: Settings, start_worker: StartWorker, redis: Any
) -> None:
    """count_tokens is the API's answer; models.list/retrieve come from the fleet's copy."""
    await start_worker()

    async def catalog_stored() -> bool:
        return await load_catalog(redis, KEYS) is not None

    await eventually(catalog_stored)
    catalog = await load_catalog(redis, KEYS)
    assert catalog is not None
    # Renamed in the copy only: what the SDK lists must be the copy, not the API.
    models = [{**m, "display_name": f"copy of {m['display_name']}"} for m in catalog.models[:5]]
    await store_catalog(redis, KEYS, models, base_url=settings.anthropic_base_url)
    async with sdk(api_server) as client:
        count = await client.messages.count_tokens(model=TEXT["model"], messages=TEXT["messages"])
        assert count.input_tokens > 0 and count._request_id is not None
        listed = [m async for m in client.models.list(limit=2)]  # pages: 2 + 2 + 1
        one = await client.models.retrieve(listed[1].id)
        with pytest.raises(anthropic.NotFoundError):
            await client.models.retrieve("claude-none-1")
    assert [m.id for m in listed] == [m["id"] for m in models]
    assert one.display_name == models[1]["display_name"] and one._request_id is not None


async def test_a_bad_request_is_a_400_and_a_bad_key_a_401(api_server: str, sim: Sim) -> None:
    """msgq's validation answers 400 invalid_request_error before any job; a wrong key 401."""
    async with sdk(api_server) as client:
        with pytest.raises(anthropic.BadRequestError) as bad:
            await client.messages.create(model=TEXT["model"], max_tokens=16, messages=[])
        assert bad.value.status_code == 400 and bad.value.request_id is not None
        assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    async with sdk(api_server, "not-a-tenant-key") as client:
        with pytest.raises(anthropic.AuthenticationError):
            await client.messages.create(**TEXT)
    assert sim.received == 0


async def test_an_upstream_529_is_retried_by_msgq(
    api_server: str, store: JobStore, sim: Sim, start_worker: StartWorker
) -> None:
    """A 529 then a 200: the SDK (max_retries=0) gets the Message; the job took two calls."""
    sim.script({"status": 529, "error_type": "overloaded_error"})
    await start_worker()
    async with sdk(api_server) as client:
        raw = await client.messages.with_raw_response.create(**TEXT)
    record = await ended(store, raw.headers["msgq-job-id"])
    assert record.status is JobStatus.SUCCEEDED and record.attempts == 2 and sim.received == 2
    assert raw.http_response.json() == record.result


async def test_a_final_upstream_error_keeps_its_status_and_request_id(
    api_server: str, sim: Sim, start_worker: StartWorker
) -> None:
    """The API's 403 comes back as a 403 permission_error carrying the API's request ID."""
    sim.script({"status": 403, "error_type": "permission_error", "message": "no access"})
    await start_worker()
    async with sdk(api_server) as client:
        with pytest.raises(anthropic.PermissionDeniedError) as denied:
            await client.messages.create(**TEXT)
    assert str(denied.value.request_id).startswith("req_sim")  # the API's, not msgq's
    assert "no access" in denied.value.message
    assert denied.value.response.headers["x-should-retry"] == "false"


async def test_budget_refusals_are_429s(
    api_server: str, api_settings: Settings, sim: Sim, start_worker: StartWorker, tmp_path: Path
) -> None:
    """on_budget fail: 429 rate_limit_error; on_budget wait: 429 at once, the job canceled."""
    path = tmp_path / "tenants.toml"
    path.write_text(
        '[tenants.tenant-a]\nbudget_usd_day = 0.0\non_budget = "fail"\n'
        '[tenants.tenant-b]\nbudget_usd_day = 0.0\non_budget = "wait"\n'
    )
    await start_worker(api_settings.model_copy(update={"tenants_file": path}))
    for key in (KEY_B, KEY_A):
        async with sdk(api_server, key) as client:
            with pytest.raises(anthropic.RateLimitError) as refused:
                await client.messages.create(**TEXT, extra_headers={"msgq-priority": "default"})
        assert refused.value.response.headers["x-should-retry"] == "false"
        assert "budget" in refused.value.message
    assert sim.received == 0


async def test_an_idempotency_key_makes_a_resend_the_same_job(
    api_server: str, sim: Sim, start_worker: StartWorker
) -> None:
    """The same Idempotency-Key twice: one call to the API, the same Message and job; a
    streamed re-send is answered from the stored Message; another body under it is a 409."""
    await start_worker()
    created = {"Idempotency-Key": "order-17"}
    streamed = {"Idempotency-Key": "order-18"}
    async with sdk(api_server) as client:
        first = await client.messages.with_raw_response.create(**TEXT, extra_headers=created)
        again = await client.messages.with_raw_response.create(**TEXT, extra_headers=created)
        finals = []
        for _ in range(2):
            async with client.messages.stream(**TEXT, extra_headers=streamed) as stream:
                finals.append((await stream.get_final_message()).model_dump())
        with pytest.raises(anthropic.ConflictError):
            await client.messages.create(**{**TEXT, "max_tokens": 9}, extra_headers=created)
    assert first.headers["msgq-job-id"] == again.headers["msgq-job-id"] == "order-17"
    assert first.http_response.json() == again.http_response.json()
    assert finals[0] == finals[1]
    assert sim.received == 2


async def test_every_anthropic_header_reaches_the_api_and_no_credential_does(
    api_server: str, store: JobStore, sim: Sim, start_worker: StartWorker
) -> None:
    """The SDK's `user_profile_id=` (sent as anthropic-user-profile-id) and an anthropic-*
    header msgq has never heard of travel with the job to the API, created and streamed; the
    caller's key does not (the API sees msgq's)."""
    await start_worker()
    extra = {"anthropic-not-yet-invented": "v1", "x-msgq-other": "not forwarded"}
    async with sdk(api_server) as client:
        raw = await client.messages.with_raw_response.create(
            **TEXT, user_profile_id="uprof_0123", extra_headers=extra
        )
        async with client.messages.stream(
            **TEXT, user_profile_id="uprof_4567", extra_headers=extra
        ) as stream:
            await stream.get_final_message()
    seen = [request["headers"] for request in sim.requests()[-2:]]
    assert [h.get("anthropic-user-profile-id") for h in seen] == ["uprof_0123", "uprof_4567"]
    for headers in seen:
        assert headers["anthropic-not-yet-invented"] == "v1"
        assert "x-msgq-other" not in headers
        assert KEY_A not in json.dumps(headers)
    record = await ended(store, raw.headers["msgq-job-id"])  # the record names them too
    assert record.api_headers == {
        "anthropic-user-profile-id": "uprof_0123",
        "anthropic-not-yet-invented": "v1",
    }
