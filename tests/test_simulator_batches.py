"""The simulator's Message Batches API, driven by the official SDK: the same engine as realtime,
a compressed clock, and faults on the batch endpoints and per request."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import SAMPLES, TEST_API_KEY, Sim, eventually

IMAGE = json.loads((SAMPLES / "requests" / "image_base64.json").read_text())
TEXT = json.loads((SAMPLES / "requests" / "text.json").read_text())


def configure(sim: Sim, **values: Any) -> None:
    sim.http.post("/_sim/batch-config", json=values).raise_for_status()


async def ended(sdk: anthropic.AsyncAnthropic, batch_id: str) -> Any:
    seen: dict[str, Any] = {}

    async def check() -> bool:
        seen["b"] = await sdk.messages.batches.retrieve(batch_id)
        return bool(seen["b"].processing_status == "ended")

    await eventually(check, timeout_s=20)
    return seen["b"]


async def test_sdk_runs_a_batch_with_the_realtime_answers_at_the_batch_tier(sim: Sim) -> None:
    """create → in_progress → ended after processing_s; results match realtime's Messages
    (usage.service_tier "batch"); list, delete; no /v1/messages call is counted."""
    configure(sim, processing_s=0.3)
    async with anthropic.AsyncAnthropic(base_url=sim.url, api_key=TEST_API_KEY) as sdk:
        realtime = await sdk.messages.create(**IMAGE)
        text = await sdk.messages.create(**TEXT)
        sim.reset()
        configure(sim, processing_s=0.3)
        batch = await sdk.messages.batches.create(
            requests=[
                {"custom_id": "img", "params": IMAGE},
                {"custom_id": "txt", "params": TEXT},
                {"custom_id": "bad", "params": {**TEXT, "max_tokens": 0}},
            ]
        )
        assert batch.processing_status == "in_progress"
        assert batch.request_counts.processing == 3 and batch.results_url is None
        done = await ended(sdk, batch.id)
        assert done.request_counts.succeeded == 2 and done.request_counts.errored == 1
        rows = [r async for r in await sdk.messages.batches.results(batch.id)]
        results = {r.custom_id: r.result for r in rows}
        page = await sdk.messages.batches.list(limit=10)
        assert [b.id for b in page.data] == [batch.id]
        deleted = await sdk.messages.batches.delete(batch.id)
        assert deleted.type == "message_batch_deleted"
    assert results["img"].message.content == realtime.content  # type: ignore[union-attr]
    assert results["txt"].message.content == text.content  # type: ignore[union-attr]
    assert results["img"].message.usage.service_tier == "batch"  # type: ignore[union-attr]
    assert results["img"].message.usage.input_tokens == realtime.usage.input_tokens  # type: ignore[union-attr]
    assert results["bad"].type == "errored"
    assert results["bad"].error.error.type == "invalid_request_error"  # type: ignore[union-attr]
    stats = sim.stats()
    assert stats["received"] == 0 and stats["batches"]["requests"] == 3


async def test_faults_errored_expired_cancel_and_429(sim: Sim) -> None:
    """errored and expired rates, a short-clock expiry, a cancel mid-way, and a scripted 429
    with retry-after on create (nothing created) all answer as the API does."""
    async with anthropic.AsyncAnthropic(
        base_url=sim.url, api_key=TEST_API_KEY, max_retries=0
    ) as sdk:
        sim.script({"status": 429, "headers": {"retry-after": "3"}}, key="batches:create")
        with pytest.raises(anthropic.RateLimitError) as refused:
            await sdk.messages.batches.create(requests=[{"custom_id": "a", "params": TEXT}])
        assert refused.value.response.headers["retry-after"] == "3"
        assert sim.http.get("/_sim/batches").json()["data"] == []

        configure(sim, processing_s=0.2, errored_rate=1.0, error_type="overloaded_error")
        errored = await sdk.messages.batches.create(
            requests=[{"custom_id": f"e{i}", "params": TEXT} for i in range(3)]
        )
        configure(sim, errored_rate=0.0, expired_rate=1.0)
        expired = await sdk.messages.batches.create(requests=[{"custom_id": "x", "params": TEXT}])
        configure(sim, expired_rate=0.0, processing_s=1.0, expiry_s=0.5)
        short = await sdk.messages.batches.create(
            requests=[{"custom_id": f"s{i}", "params": TEXT} for i in range(4)]
        )
        configure(sim, processing_s=30.0, expiry_s=86400.0)
        long = await sdk.messages.batches.create(requests=[{"custom_id": "c", "params": TEXT}])
        canceling = await sdk.messages.batches.cancel(long.id)
        assert canceling.processing_status == "canceling"
        counts = {b: (await ended(sdk, b)).request_counts for b in (errored.id, expired.id)}
        assert counts[errored.id].errored == 3 and counts[expired.id].expired == 1
        assert (await ended(sdk, short.id)).request_counts.expired == 2
        assert (await ended(sdk, long.id)).request_counts.canceled == 1
        rows = [r async for r in await sdk.messages.batches.results(errored.id)]
    assert {r.result.error.error.type for r in rows} == {"overloaded_error"}  # type: ignore[union-attr]


async def test_results_download_streams_and_can_stall_halfway(sim: Sim) -> None:
    """The results file arrives in pieces: a scripted stall halfway holds the rest back."""
    configure(sim, processing_s=0.0)
    headers = {"x-api-key": TEST_API_KEY, "anthropic-version": "2023-06-01"}
    body = {"requests": [{"custom_id": f"r{i}", "params": TEXT} for i in range(1000)]}
    async with httpx.AsyncClient(base_url=sim.url, headers=headers, timeout=10) as http:
        batch = (await http.post("/v1/messages/batches", json=body)).json()
        sim.script({"stream_stall_s": 30}, key="batches:results")
        lines = 0
        url = f"/v1/messages/batches/{batch['id']}/results"
        with contextlib.suppress(httpx.ReadTimeout):
            async with http.stream("GET", url, timeout=1) as r:
                async for _ in r.aiter_lines():
                    lines += 1
    assert lines == 500
