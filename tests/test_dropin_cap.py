"""The cap on a tenant's open drop-in calls in one API process (MSGQ_MAX_DROPIN_CALLS_PER_TENANT):
each waiting call holds a connection and, streamed, a relay, so one tenant's thousands of calls
must not take the process from the others."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from msgq.jobs.store import JobStore
from msgq.settings import Settings
from schemas import JobStatus
from tests.conftest import KEY_B, Sim, eventually
from tests.test_dropin_life import TEXT, hang_up, status_is


@pytest.fixture
def api_settings(api_settings: Settings) -> Settings:
    return api_settings.model_copy(update={"dropin_ping_s": 0.2, "max_dropin_calls_per_tenant": 2})


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


async def test_a_tenant_holds_at_most_its_cap_of_open_calls(
    http: httpx.AsyncClient, store: JobStore, sim: Sim
) -> None:
    """No worker, so calls wait. Tenant A's two calls (one plain, one streamed) fill its cap: a
    third is the API's 429 `rate_limit_error` and makes no job; tenant B still gets in; once A's
    calls end, A gets in again."""
    plain = asyncio.create_task(http.post("/v1/messages", json=TEXT, headers=keyed("cap-1")))
    await status_is(store, "cap-1", JobStatus.QUEUED)
    streamed_body = {**TEXT, "stream": True}
    async with http.stream(
        "POST", "/v1/messages", json=streamed_body, headers=keyed("cap-2")
    ) as streamed:
        assert (await anext(streamed.aiter_text())).startswith("event: ping")  # it is open
        refused = await http.post("/v1/messages", json=TEXT, headers=keyed("cap-3"))
        assert refused.status_code == 429, refused.text
        error = refused.json()
        assert error["type"] == "error" and error["error"]["type"] == "rate_limit_error"
        assert "MSGQ_MAX_DROPIN_CALLS_PER_TENANT" in error["error"]["message"]
        assert await store.get("tenant-a:cap-3") is None
        other = asyncio.create_task(
            http.post("/v1/messages", json=TEXT, headers={**keyed("cap-b"), "x-api-key": KEY_B})
        )

        async def b_queued() -> bool:
            record = await store.get("tenant-b:cap-b")
            return record is not None and record.status is JobStatus.QUEUED

        await eventually(b_queued)
        await hang_up(other)
    await hang_up(plain)
    await status_is(store, "cap-2", JobStatus.CANCELED)  # canceled after its slot was given back
    await status_is(store, "cap-1", JobStatus.CANCELED)
    again = asyncio.create_task(http.post("/v1/messages", json=TEXT, headers=keyed("cap-4")))
    await status_is(store, "cap-4", JobStatus.QUEUED)
    await hang_up(again)
    assert sim.received == 0
