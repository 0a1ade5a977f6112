"""The fleet-wide limiter, cool-downs, spend-limit pause and adaptive concurrency."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from redis.asyncio import Redis

from msgq.client import Client
from msgq.connections import connect
from msgq.dev.stack import simulator_on_free_port
from msgq.settings import Settings
from schemas import JobStatus
from tests.conftest import KEYS, Sim, StartWorker, eventually
from worker.job.concurrency import AdaptiveConcurrency
from worker.ratelimit import Limits, RateLimiter

BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 20,
    "messages": [{"role": "user", "content": "limit me"}],
}


def now_ms() -> int:
    return int(time.time() * 1000)


def test_lua_limiter_never_over_admits_across_processes(redis_url: str) -> None:
    """Four processes racing for a 100-RPM bucket admit at most its capacity plus refill."""
    start_at = time.time() + 1.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.limiter_hammer", redis_url, "300", "100", str(start_at)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    admitted = sum(int(p.communicate(timeout=60)[0]) for p in procs)
    elapsed = time.time() - start_at
    assert 100 <= admitted <= 100 + int(elapsed * 100 / 60) + 1


async def test_cooldown_from_one_worker_holds_back_another(redis_url: str) -> None:
    """A 429 cool-down set through one connection blocks acquisitions on another."""
    async with connect(redis_url) as one, connect(redis_url) as two:
        a, b = RateLimiter(one, KEYS, {}), RateLimiter(two, KEYS, {})
        assert (
            await b.acquire("claude-haiku-4-5", input_tokens=1, output_tokens=1, now_ms=now_ms())
        ).admitted
        await a.cool_down("claude-haiku-4-5-20251001", 2.0)
        held = await b.acquire("claude-haiku-4-5", input_tokens=1, output_tokens=1, now_ms=now_ms())
        assert held.reason == "cooldown" and 1.5 < held.wait_s <= 2.0
        other = await b.acquire(
            "claude-sonnet-4-5", input_tokens=1, output_tokens=1, now_ms=now_ms()
        )
        assert other.admitted  # cool-downs are per model class, as the API's limits are


async def test_limits_learned_and_corrected_from_headers(redis_url: str) -> None:
    """No (or wrong) configured limits: response headers set capacity and remaining."""
    async with connect(redis_url) as redis:
        limiter = RateLimiter(redis, KEYS, {"haiku": Limits(rpm=100_000)})
        model = "claude-haiku-4-5"
        assert (
            await limiter.acquire(model, input_tokens=1, output_tokens=1, now_ms=now_ms())
        ).admitted
        headers = {
            "anthropic-ratelimit-requests-limit": "60",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-output-tokens-limit": "1000",
            "anthropic-ratelimit-output-tokens-remaining": "1000",
        }
        await limiter.settle(model, input_delta=0, output_delta=0, headers=headers)
        held = await limiter.acquire(model, input_tokens=1, output_tokens=1, now_ms=now_ms())
        assert held.reason == "r" and 0.5 < held.wait_s <= 1.0  # one request at 60 RPM
        big = await limiter.acquire(
            model, input_tokens=1, output_tokens=5000, now_ms=now_ms() + 2000
        )
        assert big.admitted  # a reservation above capacity is clamped, never stuck forever


async def test_remaining_counts_the_requests_admitted_since_the_call_was(redis: Redis) -> None:
    """The API counted `remaining` when the call arrived: the requests this fleet admitted
    since are off it, or a fast fleet runs past the learned limit's end into 429s."""
    model = "claude-haiku-4-5"
    limiter = RateLimiter(redis, KEYS, {})
    headers = {
        "anthropic-ratelimit-requests-limit": "60",
        "anthropic-ratelimit-requests-remaining": "50",
    }
    await limiter.settle(model, input_delta=0, output_delta=0, headers=headers)  # learned: 50
    first = await limiter.acquire(model, input_tokens=1, output_tokens=1, now_ms=now_ms())
    assert first.admitted and first.count is not None
    for _ in range(9):  # nine more admitted while the first call is on its way
        assert (
            await limiter.acquire(model, input_tokens=1, output_tokens=1, now_ms=now_ms())
        ).admitted
    headers["anthropic-ratelimit-requests-remaining"] = "45"  # the API's count at its arrival
    await limiter.settle(
        model, input_delta=0, output_delta=0, headers=headers, admitted_n=first.count
    )
    bucket = await redis.hgetall(KEYS.bucket_key("haiku"))  # type: ignore[misc]
    assert float(bucket[b"r"]) <= 36.5  # 45 less the nine since (not 45, nor 40 as it was)


async def test_a_configured_limit_is_not_lowered_by_the_requests_admitted_since(
    redis: Redis,
) -> None:
    """Where MSGQ_RATE_LIMITS binds, the bucket paces to it exactly: the learned limit's
    correction (above) is not applied, since it leaves out the refill the API gave meanwhile.
    Applied, it set the level near 0 at every ending, and a fleet held to a configured 1,200
    RPM ran at 0.45 of it."""
    model = "claude-haiku-4-5"
    limiter = RateLimiter(redis, KEYS, {"haiku": Limits(rpm=60)})
    headers = {
        "anthropic-ratelimit-requests-limit": "60",
        "anthropic-ratelimit-requests-remaining": "50",
    }
    await limiter.settle(model, input_delta=0, output_delta=0, headers=headers)
    first = await limiter.acquire(model, input_tokens=1, output_tokens=1, now_ms=now_ms())
    assert first.admitted and first.count is not None
    for _ in range(9):
        assert (
            await limiter.acquire(model, input_tokens=1, output_tokens=1, now_ms=now_ms())
        ).admitted
    headers["anthropic-ratelimit-requests-remaining"] = "45"
    await limiter.settle(
        model, input_delta=0, output_delta=0, headers=headers, admitted_n=first.count
    )
    bucket = await redis.hgetall(KEYS.bucket_key("haiku"))  # type: ignore[misc]
    assert 39.5 <= float(bucket[b"r"]) <= 41  # the bucket's own 50 less its ten (not 36)


def test_adaptive_concurrency_shrinks_and_grows_back() -> None:
    """Multiplicative decrease on overload (once per interval), additive increase when clean."""
    import asyncio

    gate = AdaptiveConcurrency(16, cut_interval_s=0.0)
    gate.overloaded()
    gate.overloaded()
    assert gate.limit == 4
    for _ in range(4 + 5 + 6):
        asyncio.run(gate.succeeded())
    assert gate.limit == 7
    for _ in range(10):
        gate.overloaded()
    assert gate.limit == 1
    slow = AdaptiveConcurrency(16, cut_interval_s=60)
    slow.overloaded()
    slow.overloaded()
    assert slow.limit == 8  # a burst of 429s from calls already in flight counts once


async def test_429_cools_down_the_fleet(
    client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """After one worker's 429 (retry-after 2), no worker sends before 2 s have passed."""
    sim.script({"status": 429, "headers": {"retry-after": "2"}})
    await start_worker()
    await start_worker()
    first = await client.submit(BODY)

    async def limited() -> bool:
        return sim.received >= 1

    await eventually(limited)
    second = await client.submit(BODY)
    for job in (first, second):
        assert (await client.wait(job.id, timeout=20)).status is JobStatus.SUCCEEDED
    refused, *rest = sim.requests()
    assert refused["status"] == 429
    assert all(r["time"] - refused["time"] >= 2.0 for r in rest) and len(rest) == 2


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 429, "message": "cap", "error_code": "enforced_spend_limit_reached"},
        {"status": 400, "message": "You have reached your specified API usage limits."},
    ],
    ids=["spend-cap-429", "usage-limit-400"],
)
async def test_spend_limit_pauses_the_fleet_until_resumed(
    redis: Redis, fault: dict[str, object], client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """A spend-limit answer pauses sending: jobs stay queued (not failed) until resume."""
    sim.script(fault)
    await start_worker()
    first = await client.submit(BODY)

    async def paused() -> bool:
        return await RateLimiter(redis, KEYS, {}).paused() is not None

    await eventually(paused)
    second = await client.submit(BODY)

    async def handed_back() -> bool:  # the pause is set first, so no other call goes out
        return (await client.get(first.id)).status is JobStatus.QUEUED

    await eventually(handed_back)
    record = await client.get(first.id)
    assert record.status is JobStatus.QUEUED and record.attempts == 0
    assert record.error is not None and record.error.type == "spend_limit"
    assert sim.received == 1
    assert (await client.get(second.id)).status is JobStatus.QUEUED
    await RateLimiter(redis, KEYS, {}).resume()
    for job in (first, second):
        assert (await client.wait(job.id, timeout=20)).status is JobStatus.SUCCEEDED
    assert sim.received == 3


@pytest.mark.parametrize("spelling", ["0", "until-resume"])
async def test_spend_pause_until_resume_has_a_working_spelling(
    redis: Redis,
    settings: Settings,
    client: Client,
    sim: Sim,
    start_worker: StartWorker,
    monkeypatch: pytest.MonkeyPatch,
    spelling: str,
) -> None:
    """MSGQ_SPEND_PAUSE_S=0 (or until-resume) pauses with no expiry until `msgq resume`."""
    monkeypatch.setenv("MSGQ_SPEND_PAUSE_S", spelling)
    pause_s = Settings(_env_file=None).spend_pause_s
    monkeypatch.setenv("MSGQ_SPEND_PAUSE_S", "")
    assert Settings(_env_file=None).spend_pause_s == 3600  # empty: the default
    sim.script({"status": 429, "message": "cap", "error_code": "enforced_spend_limit_reached"})
    await start_worker(settings.model_copy(update={"spend_pause_s": pause_s}))
    job = await client.submit(BODY)

    async def paused() -> bool:
        return await RateLimiter(redis, KEYS, {}).paused() is not None

    await eventually(paused)
    assert await redis.ttl(KEYS.pause_key) == -1  # no expiry: only an operator lifts it
    record = await client.get(job.id)
    assert record.status is JobStatus.QUEUED and record.attempts == 0
    assert sim.received == 1
    await RateLimiter(redis, KEYS, {}).resume()
    assert (await client.wait(job.id, timeout=20)).status is JobStatus.SUCCEEDED


@pytest.fixture
def limited_simulator() -> Iterator[str]:
    """A simulator limited to 120 RPM (2 per second, a minute's burst)."""
    with simulator_on_free_port("--rpm", "120") as url:
        yield url


async def test_fleet_learns_the_limit_and_avoids_429s(
    settings: Settings, client: Client, limited_simulator: str, start_worker: StartWorker
) -> None:
    """With no configured limits, two workers learn 120 RPM from headers: 130 jobs, no 429."""
    import httpx

    custom = settings.model_copy(update={"anthropic_base_url": limited_simulator})
    await start_worker(custom)
    await start_worker(custom)
    started = time.monotonic()
    jobs = [await client.submit(BODY) for _ in range(130)]
    for job in jobs:
        assert (await client.wait(job.id, timeout=60)).status is JobStatus.SUCCEEDED
    elapsed = time.monotonic() - started
    async with httpx.AsyncClient() as http:
        stats = (await http.get(f"{limited_simulator}/_sim/stats")).json()
    assert stats["by_status"].get("429", 0) == 0
    assert stats["by_status"]["200"] == 130
    assert elapsed >= 3.5  # the last 10 needed the bucket to refill at 2/s


async def test_configured_limit_is_a_cap_learned_limits_only_lower_it_and_age_out(
    redis: Redis,
) -> None:
    """Two fleets on one org: a configured 10 RPM share survives headers saying 1,000; a
    learned 5 lowers it while fresh; once the headers stop coming, the 10 holds again."""
    await redis.flushall()
    limiter = RateLimiter(redis, KEYS, {"haiku": Limits(rpm=10)}, learned_ttl_s=60)
    model = "claude-haiku-4-5"
    t0 = now_ms()

    async def admitted(n: int, at: int) -> int:
        ok = 0
        for _ in range(n):
            a = await limiter.acquire(model, input_tokens=0, output_tokens=0, now_ms=at)
            ok += a.admitted
        return ok

    high = {"anthropic-ratelimit-requests-limit": "1000"}
    await limiter.settle(model, input_delta=0, output_delta=0, headers=high)
    assert await admitted(20, t0) == 10  # the configured cap, not the learned 1,000
    low = {"anthropic-ratelimit-requests-limit": "5", "anthropic-ratelimit-requests-remaining": "5"}
    await limiter.settle(model, input_delta=0, output_delta=0, headers=low)
    refilled = t0 + 60_000  # a minute later the bucket is full again
    assert await admitted(20, refilled) == 5  # learned lower limit applies while fresh
    aged = refilled + 2 * 60_000  # no headers for two minutes: the learned limit lapsed
    assert await admitted(20, aged) == 10


async def test_large_request_holds_a_reservation_and_is_not_starved(redis: Redis) -> None:
    """A request needing the whole OTPM bucket, behind a stream of small ones, is served within
    two refill periods (simulated clock); without the hold it would wait forever."""
    await redis.flushall()
    limiter = RateLimiter(redis, KEYS, {"haiku": Limits(otpm=1000)})
    model, start = "claude-haiku-4-5", now_ms()
    served_at = None
    small = 0
    for second in range(0, 600):
        at = start + second * 1000
        for k in range(5):  # a steady stream of small requests from other jobs
            a = await limiter.acquire(
                model, input_tokens=0, output_tokens=100, now_ms=at, holder=f"s{second}-{k}"
            )
            small += a.admitted
        big = await limiter.acquire(
            model, input_tokens=0, output_tokens=5000, now_ms=at, holder="large"
        )
        if big.admitted:
            served_at = second
            break
    assert served_at is not None and served_at <= 120, served_at
    assert small >= 5  # small work flowed until the large request had to wait
