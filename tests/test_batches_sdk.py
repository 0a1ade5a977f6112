"""The official anthropic SDK, pointed at msgq's API, runs Message Batches unchanged."""

from __future__ import annotations

import json
from typing import Any

import anthropic

from msgq.settings import Settings
from tests.conftest import KEY_A, SAMPLES, Sim, StartWorker, eventually

TEXT = json.loads((SAMPLES / "requests" / "text.json").read_text())
IMAGE = json.loads((SAMPLES / "requests" / "image_base64.json").read_text())


async def ended(sdk: anthropic.AsyncAnthropic, batch_id: str) -> Any:
    batch: dict[str, Any] = {}

    async def check() -> bool:
        batch["b"] = await sdk.messages.batches.retrieve(batch_id)
        return bool(batch["b"].processing_status == "ended")

    await eventually(check, timeout_s=60)
    return batch["b"]


async def test_sdk_creates_polls_and_reads_a_batch_of_50(
    api_server: str, sim: Sim, start_worker: StartWorker
) -> None:
    """50 text and image requests: ended, 50 succeeded results matched by custom_id."""
    await start_worker()
    requests: list[Any] = [
        {"custom_id": f"req-{i}", "params": TEXT if i % 2 else IMAGE} for i in range(50)
    ]
    async with anthropic.AsyncAnthropic(base_url=api_server, api_key=KEY_A) as sdk:
        batch = await sdk.messages.batches.create(requests=requests)
        assert batch.processing_status == "in_progress"
        assert batch.request_counts.processing == 50
        done = await ended(sdk, batch.id)
        assert done.request_counts.succeeded == 50 and done.ended_at is not None
        results = [r async for r in await sdk.messages.batches.results(batch.id)]
    assert sorted(r.custom_id for r in results) == sorted(f"req-{i}" for i in range(50))
    assert {r.result.type for r in results} == {"succeeded"}
    by_id = {r.custom_id: r.result for r in results}
    assert by_id["req-0"].message.content[0].text.startswith("A 64x64 PNG image")  # type: ignore[union-attr]
    assert sim.received == 50


async def test_sdk_cancel_midway_and_list_pages(
    api_server: str, settings: Settings, sim: Sim, start_worker: StartWorker
) -> None:
    """Canceled mid-way: what ran succeeded, the rest `canceled`; list pages by after_id."""
    sim.script(*[{"delay_s": 0.2}] * 20)
    await start_worker(settings.model_copy(update={"max_jobs": 2}))
    requests: list[Any] = [{"custom_id": f"c{i}", "params": TEXT} for i in range(20)]
    async with anthropic.AsyncAnthropic(base_url=api_server, api_key=KEY_A) as sdk:
        batch = await sdk.messages.batches.create(requests=requests)

        async def some_ran() -> bool:
            return sim.received >= 4

        await eventually(some_ran)
        canceling = await sdk.messages.batches.cancel(batch.id)
        assert canceling.cancel_initiated_at is not None
        done = await ended(sdk, batch.id)
        counts = done.request_counts
        assert counts.succeeded >= 2 and counts.canceled >= 10
        assert counts.succeeded + counts.canceled == 20
        results = [r async for r in await sdk.messages.batches.results(batch.id)]
        assert sum(r.result.type == "canceled" for r in results) == counts.canceled

        others = [await sdk.messages.batches.create(requests=requests[:1]) for _ in range(2)]
        newest_first = [others[1].id, others[0].id, batch.id]
        page = await sdk.messages.batches.list(limit=2)
        assert [b.id for b in page.data] == newest_first[:2] and page.has_more
        listed = [b.id async for b in sdk.messages.batches.list(limit=2)]  # auto-paginates
        assert listed == newest_first
        deleted = await sdk.messages.batches.delete(batch.id)
        assert deleted.type == "message_batch_deleted"
        assert [b.id async for b in sdk.messages.batches.list()] == newest_first[:2]
