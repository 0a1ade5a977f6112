"""Cost as the API bills it: every current model on both sides of its tier, from the
simulator's usage; cache writes (5 min, 1 h) and reads per tier; batch at half; unknown models
with a null cost and the reason. Prices here are the reference's (§12.2), typed out again."""

from __future__ import annotations

from typing import Any

import pytest

from msgq.client import Client
from msgq.pricing import priced
from msgq.settings import Settings
from schemas import JobStatus
from tests.conftest import Sim, StartWorker

# model: (input, output) per MTok at or below the threshold, and above it (None: one price).
CURRENT: dict[str, tuple[tuple[float, float], tuple[float, float] | None]] = {
    "claude-haiku-5-5": ((0.10, 0.50), (0.50, 2.50)),
    "claude-opus-5-5": ((4.0, 20.0), None),
    "claude-opus-5": ((5.0, 25.0), None),
    "claude-sonnet-5-5": ((2.0, 10.0), None),
    "claude-sonnet-5": ((2.0, 10.0), None),
    "claude-fable-5-2": ((8.0, 40.0), None),
    "claude-fable-5-1": ((10.0, 50.0), None),
    "claude-haiku-4-5": ((1.0, 5.0), None),
}
THRESHOLD = 100_000  # Haiku 5.5's; the others are checked at the same two sizes


def prompt(tokens: int) -> str:
    return "word " * (tokens * 4 // 5)  # the simulator counts ~4 characters a token


@pytest.mark.parametrize("model", sorted(CURRENT))
async def test_cost_on_both_sides_of_the_tier(
    model: str, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """Just under and just over 100k prompt tokens: each priced at its own tier's rates."""
    await start_worker()
    low, high = CURRENT[model]
    for size, rates in ((THRESHOLD - 2_000, low), (THRESHOLD + 2_000, high or low)):
        request = {
            "model": model,
            "max_tokens": 50,
            "messages": [{"role": "user", "content": prompt(size)}],
        }
        job = await client.submit(request)
        record = await client.wait(job.id, timeout=30)
        assert record.status is JobStatus.SUCCEEDED and record.usage is not None
        used = record.usage.input_tokens
        assert (used > THRESHOLD) == (size > THRESHOLD)  # the simulator's count is on that side
        expected = (used * rates[0] + record.usage.output_tokens * rates[1]) / 1e6
        assert record.cost_usd == pytest.approx(expected, rel=1e-6)
        assert record.cost_note is None


def usage(uncached: int, w5: int, w1: int, read: int, out: int) -> dict[str, Any]:
    return {
        "input_tokens": uncached,
        "cache_creation_input_tokens": w5 + w1,
        "cache_creation": {"ephemeral_5m_input_tokens": w5, "ephemeral_1h_input_tokens": w1},
        "cache_read_input_tokens": read,
        "output_tokens": out,
    }


def test_haiku_5_5_cache_prices_follow_the_tier_and_batch_halves() -> None:
    """The prompt size counts cache writes and reads; every category moves tier together."""
    below = usage(40_000, 30_000, 10_000, 20_000, 1_000)  # 100,000 exactly: the low tier
    low = (40_000 * 0.10 + 30_000 * 0.125 + 10_000 * 0.20 + 20_000 * 0.01 + 1_000 * 0.50) / 1e6
    assert priced("claude-haiku-5-5", below)[0] == pytest.approx(low)
    above = usage(40_001, 30_000, 10_000, 20_000, 1_000)
    high = (40_001 * 0.5 + 30_000 * 0.625 + 10_000 * 1.0 + 20_000 * 0.05 + 1_000 * 2.5) / 1e6
    assert priced("claude-haiku-5-5", above)[0] == pytest.approx(high)
    assert priced("claude-haiku-5-5", above, batch=True)[0] == pytest.approx(high / 2)
    assert priced("claude-haiku-5-5", {**above, "service_tier": "batch"})[0] == pytest.approx(
        high / 2
    )


def test_sonnet_4_5_long_context_premium_above_200k() -> None:
    """Sonnet 4.5 with the 1M beta: $6 / $22.50 above 200k prompt tokens, for the whole call."""
    assert priced("claude-sonnet-4-5", usage(200_000, 0, 0, 0, 0))[0] == pytest.approx(0.6)
    assert priced("claude-sonnet-4-5", usage(200_001, 0, 0, 0, 1000))[0] == pytest.approx(
        (200_001 * 6 + 1000 * 22.5) / 1e6
    )


async def test_unknown_model_has_a_null_cost_with_the_reason(
    client: Client, settings: Settings, start_worker: StartWorker
) -> None:
    """A model no table knows runs; its cost is null and the record says why."""
    await start_worker()
    request = {
        "model": "claude-nova-9",
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "hi"}],
    }
    record = await client.wait((await client.submit(request)).id, timeout=15)
    assert record.status is JobStatus.SUCCEEDED
    assert record.cost_usd is None and "claude-nova-9" in (record.cost_note or "")
