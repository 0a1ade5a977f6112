"""The worker loop's own bookkeeping: one heartbeat for all jobs, pick-up in one script, and a
terminal record that ends the job in the queue in the same write."""

from __future__ import annotations

from redis.asyncio import Redis

from schemas import JobStatus
from tests.conftest import Sim, StartWorker
from worker.arq_adapter import IN_PROGRESS_KEY_PREFIX, JOB_KEY_PREFIX, RETRY_KEY_PREFIX
from worker.client import Client
from worker.keys import COOLING_KEY, cooldown_key
from worker.runtime.ratelimit import RateLimiter, model_class
from worker.settings import Settings

BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 20,
    "messages": [{"role": "user", "content": "hello"}],
}


async def test_a_job_longer_than_its_lock_runs_once_across_two_workers(
    client: Client, sim: Sim, settings: Settings, start_worker: StartWorker
) -> None:
    """The call takes three lock lengths; the worker's heartbeat keeps the lock, so the idle
    second worker never claims the job (without it, the lock lapses and the job runs twice)."""
    short_lock = settings.model_copy(update={"lock_s": 1.0})
    sim.script({"delay_s": 3.0})
    await start_worker(short_lock)
    await start_worker(short_lock)
    job = await client.submit(BODY)
    record = await client.wait(job.id, timeout=30)
    assert record.status is JobStatus.SUCCEEDED
    assert record.attempts == 1
    assert sim.received == 1


async def test_a_finished_job_leaves_nothing_of_the_queue_behind(
    client: Client, redis: Redis, settings: Settings, start_worker: StartWorker
) -> None:
    """The terminal record's write ends the job in the queue (the worker skips arq's own
    finish): payload, lock, try counter and queue entry are all gone with it."""
    await start_worker()
    jobs = [await client.submit(BODY) for _ in range(5)]
    for job in jobs:
        assert (await client.wait(job.id, timeout=20)).status is JobStatus.SUCCEEDED
    for job in jobs:
        for prefix in (JOB_KEY_PREFIX, IN_PROGRESS_KEY_PREFIX, RETRY_KEY_PREFIX):
            assert not await redis.exists(prefix + job.id), prefix
        assert await redis.zscore(settings.queue_name, job.id) is None


async def test_a_cool_down_closes_the_fleet_gate_for_as_long_as_the_longest(
    redis: Redis,
) -> None:
    """The pick-up reads one marker for "some class cools down" (it does not know the job's
    model yet): it lasts as long as the longest cool-down, and never shortens."""
    limiter = RateLimiter(redis, {})
    await limiter.cool_down("claude-haiku-4-5", 5.0)
    await limiter.cool_down("claude-sonnet-4-5", 1.0)
    assert 4000 < await redis.pttl(COOLING_KEY) <= 5000
    assert await redis.pttl(cooldown_key(model_class("claude-sonnet-4-5"))) <= 1000
    await limiter.cool_down("claude-sonnet-4-5", 20.0)
    assert await redis.pttl(COOLING_KEY) > 19000
