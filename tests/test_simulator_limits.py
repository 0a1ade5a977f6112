"""The simulator's limits and latency as the API has them: headers rounded and reset as the API
reports them, cache reads free of ITPM, acceleration 429s on a sudden jump, and a latency model
(TTFT + tokens/s with a seeded spread) that also paces streams."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import httpx
import pytest

from msgq.dev.simulator.accel import AccelConfig, Acceleration, Ramp
from msgq.dev.simulator.latency import LatencyModel
from msgq.dev.simulator.limits import round_tokens
from msgq.dev.stack import simulator_on_free_port
from tests.conftest import Sim

KEY = "sk-ant-limits-test-key-123456"
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@contextmanager
def simulator(*flags: str) -> Iterator[Sim]:
    """A simulator of its own, started with these flags (the session one has no limits)."""
    with simulator_on_free_port(*flags) as url:
        sim = Sim(url)
        yield sim
        sim.http.close()


@pytest.fixture(scope="module")
def limited() -> Iterator[Sim]:
    with simulator("--rpm", "600", "--itpm", "100000", "--otpm", "20000") as sim:
        yield sim


@pytest.fixture
def fresh(limited: Sim) -> Sim:
    limited.reset()  # full buckets, empty prompt cache
    return limited


def ask(sim: Sim, prompt_tokens: int, **extra: object) -> httpx.Response:
    """A request whose prompt is exactly `prompt_tokens` tokens (4 characters each)."""
    payload = {
        "model": "claude-haiku-4-5",
        "max_tokens": 5000,
        "messages": [{"role": "user", "content": "x" * (4 * prompt_tokens)}],
        **extra,
    }
    return httpx.post(f"{sim.url}/v1/messages", json=payload, headers=HEADERS, timeout=30)


def test_token_headers_round_to_the_nearest_thousand_halves_up(fresh: Sim) -> None:
    """100,000 - 1,500 reports 99,000 (not banker's 98,000); - 1,600 reports 98,000; the
    requests bucket stays exact."""
    first = ask(fresh, 1500).headers
    assert first["anthropic-ratelimit-input-tokens-limit"] == "100000"
    assert first["anthropic-ratelimit-input-tokens-remaining"] == "99000"
    assert first["anthropic-ratelimit-requests-remaining"] == "599"
    fresh.reset()  # full again: no refill time in the numbers
    second = ask(fresh, 1600).headers
    assert second["anthropic-ratelimit-input-tokens-remaining"] == "98000"
    assert round_tokens(499) == 0 and round_tokens(500) == 1000 and round_tokens(-300) == 0


def test_resets_are_rfc3339_when_the_bucket_is_full_again(fresh: Sim) -> None:
    """3,400 of 20,000 output tokens/min used: the output bucket is full again in ~10.2 s."""
    fresh.script({"output_tokens": 3400})
    before = time.time()
    headers = ask(fresh, 10).headers
    assert headers["anthropic-ratelimit-output-tokens-remaining"] == "17000"  # 16,600 rounded
    for name in ("requests", "input-tokens", "output-tokens", "tokens"):
        assert RFC3339_UTC.match(headers[f"anthropic-ratelimit-{name}-reset"]), name
    reset = datetime.fromisoformat(headers["anthropic-ratelimit-output-tokens-reset"])
    assert reset.tzinfo is not None and reset.utcoffset() == UTC.utcoffset(None)
    assert 9 <= reset.timestamp() - before <= 13


def test_tokens_headers_report_the_most_restrictive_bucket(fresh: Sim) -> None:
    """-tokens-* is whichever of input and output has fewer tokens left: output after a long
    answer, input after a huge prompt."""
    fresh.script({"output_tokens": 3400})
    long_answer = ask(fresh, 10).headers
    assert long_answer["anthropic-ratelimit-tokens-limit"] == "20000"
    assert long_answer["anthropic-ratelimit-tokens-remaining"] == "17000"
    fresh.reset()
    huge_prompt = ask(fresh, 90_000).headers
    assert huge_prompt["anthropic-ratelimit-tokens-limit"] == "100000"
    assert huge_prompt["anthropic-ratelimit-tokens-remaining"] == "10000"


def cached_prompt(prefix_tokens: int) -> dict[str, object]:
    system = [
        {"type": "text", "text": "y" * (4 * prefix_tokens), "cache_control": {"type": "ephemeral"}}
    ]
    return {"system": system}


def test_cache_reads_do_not_count_towards_itpm(fresh: Sim) -> None:
    """The second identical call reads its 20,000-token prefix from the cache: usage says so,
    and the ITPM bucket is charged only the uncached tokens."""
    first = ask(fresh, 100, **cached_prompt(20_000))
    usage = first.json()["usage"]
    assert usage["cache_creation_input_tokens"] == 20_000 and usage["cache_read_input_tokens"] == 0
    assert usage["cache_creation"] == {
        "ephemeral_5m_input_tokens": 20_000,
        "ephemeral_1h_input_tokens": 0,
    }
    after_write = int(first.headers["anthropic-ratelimit-input-tokens-remaining"])
    assert after_write == 80_000  # 100,000 - 20,100, rounded
    second = ask(fresh, 100, **cached_prompt(20_000))
    usage = second.json()["usage"]
    assert usage["cache_read_input_tokens"] == 20_000 and usage["input_tokens"] == 100
    assert usage["cache_creation_input_tokens"] == 0
    # Counted, the read would have left about 60,000; only the 100 uncached tokens were taken.
    assert int(second.headers["anthropic-ratelimit-input-tokens-remaining"]) >= after_write


def test_a_prefix_below_the_models_minimum_is_not_cached(fresh: Sim) -> None:
    """Haiku 4.5 caches from 4,096 tokens: a 1,000-token prefix is billed as plain input."""
    for _ in range(2):
        usage = ask(fresh, 10, **cached_prompt(1000)).json()["usage"]
        assert usage["cache_read_input_tokens"] == usage["cache_creation_input_tokens"] == 0
        assert usage["input_tokens"] == 1010


def test_a_sudden_jump_meets_acceleration_429s_below_the_rpm_limit() -> None:
    """From idle, 40 requests at once against 600 RPM with a 5% burst allowance: 30 pass, the
    rest are 429 rate_limit_error with a retry-after no longer than the window."""
    flags = ("--rpm", "600", "--accel-fraction", "0.05", "--accel-window-s", "30")
    with simulator(*flags) as sim:
        sim.reset()  # windows count from here: all 40 land in the first
        with httpx.Client(timeout=10) as http:
            answers = [
                http.post(
                    f"{sim.url}/v1/messages",
                    headers=HEADERS,
                    json={
                        "model": "claude-haiku-4-5",
                        "max_tokens": 5,
                        "messages": [{"role": "user", "content": "hi"}],
                    },
                )
                for _ in range(40)
            ]
    statuses = [a.status_code for a in answers]
    assert statuses == [200] * 30 + [429] * 10
    refused = answers[-1]
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert "acceleration" in refused.json()["error"]["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 30
    assert 570 <= int(refused.headers["anthropic-ratelimit-requests-remaining"]) < 600


def test_acceleration_allowance_grows_with_sustained_traffic_and_resets_when_idle() -> None:
    """Simulated clock: window 1 admits the 5% floor (30), window 2 twice what window 1 did,
    window 3 twice that; after an idle window the floor applies again."""
    accel = Acceleration(AccelConfig(fraction=0.05, window_s=1.0), requests=Ramp(600))

    def admitted_in(window: int, offered: int) -> int:
        count = 0
        for _ in range(offered):
            if accel.wait_s(window + 0.5, 0) == 0:
                accel.take(0)
                count += 1
        return count

    assert [admitted_in(w, 200) for w in (0, 1, 2)] == [30, 60, 120]
    assert admitted_in(4, 200) == 30  # window 3 was idle
    assert Acceleration(AccelConfig(), requests=Ramp(600)).wait_s(0.5, 0) == 0  # off by default


def test_latency_options_fall_back_to_the_older_ones() -> None:
    """--ttft-ms defaults to --latency-ms, --tokens-per-s to 1000 / --ms-per-token."""
    old = LatencyModel.from_options(latency_ms=150, ms_per_token=2)
    assert (old.ttft_ms, old.ms_per_token, old.spread) == (150, 2, 0)
    new = LatencyModel.from_options(latency_ms=150, ms_per_token=2, ttft_ms=400, tokens_per_s=50)
    assert (new.ttft_ms, new.ms_per_token) == (400, 20)


def test_latency_model_draws_within_bounds_deterministically_per_seed() -> None:
    """TTFT and pace vary per request within exp(+-3 sigma) of their medians; a reset replays
    the same draws (seeded); the non-streaming answer waits at least the drawn TTFT."""
    flags = ("--ttft-ms", "40", "--tokens-per-s", "2000", "--latency-spread", "0.3")
    with simulator(*flags, "--seed", "7") as sim:
        runs = []
        for _ in range(2):
            sim.reset()
            started = time.monotonic()
            for _ in range(12):
                assert ask(sim, 10, max_tokens=50).status_code == 200
            elapsed_ms = (time.monotonic() - started) * 1000
            runs.append([entry["latency"] for entry in sim.requests()])
    low, high = math.exp(-0.9), math.exp(0.9)
    first = runs[0]
    assert len(first) == 12 and runs[0] == runs[1]
    for drawn in first:
        assert 40 * low <= drawn["ttft_ms"] <= 40 * high
        assert 0.5 * low <= drawn["ms_per_token"] <= 0.5 * high
        expected = drawn["ttft_ms"] + drawn["ms_per_token"] * drawn["output_tokens"]
        assert drawn["total_ms"] == pytest.approx(expected, abs=0.01)
    assert len({d["ttft_ms"] for d in first}) > 1  # spread: not one fixed delay
    assert elapsed_ms >= sum(d["total_ms"] for d in first)  # calls are sequential


def test_streams_are_paced_by_the_same_model() -> None:
    """A streamed 400-token answer at ~400 tokens/s takes at least TTFT + 400 paced tokens."""
    flags = ("--ttft-ms", "50", "--tokens-per-s", "400", "--latency-spread", "0.2")
    with simulator(*flags) as sim:
        sim.script({"output_tokens": 400})
        started = time.monotonic()
        with httpx.stream(
            "POST",
            f"{sim.url}/v1/messages",
            headers=HEADERS,
            json={
                "model": "claude-haiku-4-5",
                "max_tokens": 1000,
                "stream": True,
                "messages": [{"role": "user", "content": "Write."}],
            },
            timeout=30,
        ) as response:
            events = sum(1 for line in response.iter_lines() if line.startswith("event:"))
        elapsed_ms = (time.monotonic() - started) * 1000
        (entry,) = sim.requests()
    drawn = entry["latency"]
    assert events > 20 and drawn["output_tokens"] == 400
    assert 2.5 * math.exp(-0.6) <= drawn["ms_per_token"] <= 2.5 * math.exp(0.6)
    # The last delta is due when all 400 tokens are out; a token's worth of slack for rounding.
    assert elapsed_ms >= drawn["ttft_ms"] + drawn["ms_per_token"] * 399
