"""End to end: client → Redis → worker → simulator over HTTP → stored record."""

from __future__ import annotations

import json

import pytest

from msgq.client import Client
from schemas import JobStatus
from tests.conftest import SAMPLES, TEST_API_KEY, Sim, StartWorker

# USD per million tokens (input, output), copied by hand from schemas/models.toml: the expected
# cost must not come from the code under test.
PRICES = {"claude-haiku-4-5": (1.0, 5.0), "claude-sonnet-4-5": (3.0, 15.0)}


@pytest.mark.parametrize("name", ["text", "multi_turn", "prefill", "image_base64"])
async def test_seed_request_succeeds_with_usage_and_cost(
    name: str, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """Each seed request kind succeeds; the stored result is what the simulator sent."""
    body = json.loads((SAMPLES / "requests" / f"{name}.json").read_text())
    await start_worker()
    job = await client.submit(body, metadata={"kind": name})
    record = await client.wait(job.id, timeout=20)

    assert record.status is JobStatus.SUCCEEDED, record.error
    (seen,) = sim.requests()
    # Calls below MSGQ_STREAM_MIN_MAX_TOKENS go as the producer wrote them; longer ones stream.
    streams = body["max_tokens"] >= 1024
    assert seen["body"] == ({**body, "stream": True} if streams else body)
    assert seen["headers"]["anthropic-version"] == "2023-06-01"
    assert record.result == seen["response"]
    assert record.upstream_request_id and record.upstream_request_id.startswith("req_sim")
    usage = seen["response"]["usage"]
    assert record.usage is not None
    assert record.usage.input_tokens == usage["input_tokens"] > 0
    assert record.usage.output_tokens == usage["output_tokens"] > 0
    assert not usage.get("cache_creation_input_tokens") and not usage.get("cache_read_input_tokens")
    input_usd, output_usd = PRICES[body["model"]]
    expected = (usage["input_tokens"] * input_usd + usage["output_tokens"] * output_usd) / 1e6
    assert record.cost_usd == pytest.approx(expected, rel=1e-6) and record.cost_usd > 0
    assert record.attempts == 1 and record.metadata == {"kind": name}
    assert record.started_at and record.finished_at and record.finished_at >= record.started_at
    assert TEST_API_KEY not in json.dumps(seen["headers"])


async def test_prefill_continues_and_honours_max_tokens(
    client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """The prefill request with max_tokens 1 stops on max_tokens with a continuation."""
    body = json.loads((SAMPLES / "requests" / "prefill.json").read_text())
    await start_worker()
    record = await client.wait((await client.submit(body)).id, timeout=20)
    assert record.result is not None
    assert record.result["stop_reason"] == "max_tokens"
    assert record.result["usage"]["output_tokens"] == 1


async def test_image_description_comes_from_pixels(
    client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """The simulator describes the image it received: size, format and colours."""
    body = json.loads((SAMPLES / "requests" / "image_base64.json").read_text())
    await start_worker()
    record = await client.wait((await client.submit(body)).id, timeout=20)
    assert record.result is not None
    text = record.result["content"][0]["text"]
    assert text.startswith("A 64x64 PNG image, mostly blue")
