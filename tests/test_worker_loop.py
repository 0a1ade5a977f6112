"""The worker loop's own bookkeeping: one heartbeat for all jobs, pick-up in one script, and a
terminal record that ends the job in the queue in the same write."""

from __future__ import annotations

import asyncio
import contextlib
import time

from redis.asyncio import Redis

from msgq.client import Client
from msgq.connections import connect
from msgq.settings import Settings
from schemas import JobStatus
from tests.conftest import KEYS, Sim, StartWorker, eventually
from worker.ratelimit import RateLimiter, model_class

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
        for key in (KEYS.arq_job_key, KEYS.in_progress_key, KEYS.retry_key):
            assert not await redis.exists(key(job.id)), key
        assert await redis.zscore(settings.keys.for_job(job.id).queue, job.id) is None


async def test_a_cool_down_closes_the_fleet_gate_for_as_long_as_the_longest(
    redis: Redis,
) -> None:
    """The pick-up reads one marker for "some class cools down" (it does not know the job's
    model yet): it lasts as long as the longest cool-down, and never shortens."""
    limiter = RateLimiter(redis, KEYS, {})
    await limiter.cool_down("claude-haiku-4-5", 5.0)
    await limiter.cool_down("claude-sonnet-4-5", 1.0)
    assert 4000 < await redis.pttl(KEYS.cooling_key) <= 5000
    assert await redis.pttl(KEYS.cooldown_key(model_class("claude-sonnet-4-5"))) <= 1000
    await limiter.cool_down("claude-sonnet-4-5", 20.0)
    assert await redis.pttl(KEYS.cooling_key) > 19000


async def test_a_job_with_an_unreadable_key_is_refused_and_holds_up_no_other(
    client: Client, redis: Redis, settings: Settings, start_worker: StartWorker
) -> None:
    """One claim script serves several jobs; a job whose payload key has the wrong type makes
    its own claim fail (failed, with why) instead of failing the whole batch every poll, which
    would stop pick-up for the fleet."""
    plain = settings.model_copy(update={"scheduler": False})
    async with Client(connect(settings.redis_url), plain) as producer:
        bad = await producer.submit(BODY)
        good = await producer.submit(BODY)
        await redis.delete(KEYS.arq_job_key(bad.id))
        await redis.hset(KEYS.arq_job_key(bad.id), "not", "a string")  # type: ignore[misc]
        await start_worker(plain)
        assert (await producer.wait(good.id, timeout=20)).status is JobStatus.SUCCEEDED
        failed = await producer.wait(bad.id, timeout=20)
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None and "WRONGTYPE" in failed.error.message


async def test_a_claim_resent_after_its_reply_was_lost_gets_the_job_again(
    redis: Redis, settings: Settings
) -> None:
    """redis-py re-sends a command whose reply a dropped connection lost. The first claim ran:
    the job is locked with this worker's token. The re-sent claim hands the job over again
    (try counted once) instead of leaving it locked for `lock_s`; another worker still cannot
    take it."""
    from worker.main import build_worker

    await redis.set(KEYS.arq_job_key("resent"), b'{"t":1,"f":"run_message","a":[],"k":{},"et":1}')
    await redis.zadd(settings.keys.for_job("resent").queue, {"resent": 1})
    worker = build_worker(settings, handle_signals=False)
    other = build_worker(settings, handle_signals=False)
    try:
        first = await worker._claim_jobs(["resent"])
        again = await worker._claim_jobs(["resent"])
        assert first[0] is not None and again[0] is not None
        assert (first[0].job_try, again[0].job_try) == (1, 1)
        assert again[0].payload == first[0].payload
        assert await other._claim_jobs(["resent"]) == [None]
    finally:
        await worker.pool.aclose()
        await other.pool.aclose()


async def test_a_deferred_job_no_longer_queued_is_not_queued_again(
    redis: Redis, settings: Settings
) -> None:
    """A deferred job is re-scored only if still queued (a terminal record may already have
    taken it out: re-adding it would leave an entry with no payload), and to when it is due
    again, not by arq's increment on its score: a running job is scored at its lock's expiry,
    so an increment would add the lock's length to every deferral."""
    from worker.main import build_worker

    worker = build_worker(settings, handle_signals=False)
    try:
        await worker.finish_job("gone", False, None, 0, False, 2000, None)
        assert await redis.zscore(settings.keys.for_job("gone").queue, "gone") is None
        await redis.zadd(settings.keys.for_job("here").queue, {"here": 99_000})  # lock's expiry
        await worker.finish_job("here", False, None, 0, False, 2000, None)
        assert await redis.zscore(settings.keys.for_job("here").queue, "here") == 2000
    finally:
        await worker.pool.aclose()


async def test_a_running_job_is_out_of_the_due_range_until_its_lock_lapses(
    client: Client, redis: Redis, sim: Sim, settings: Settings, start_worker: StartWorker
) -> None:
    """A claimed job is scored at its lock's expiry and each heartbeat moves it on: the due
    scan never reads past the fleet's running jobs, and the job is not due while it runs."""
    short_lock = settings.model_copy(update={"lock_s": 1.5})
    sim.script({"delay_s": 3.0})
    await start_worker(short_lock)
    job = await client.submit(BODY)
    queue = settings.keys.for_job(job.id).queue
    lock = settings.keys.in_progress_key(job.id)

    async def locked() -> bool:
        return bool(await redis.exists(lock))

    await eventually(locked)
    first = await redis.zscore(queue, job.id)
    assert first is not None and first > time.time() * 1000  # not due while it runs

    async def moved_on() -> bool:
        score = await redis.zscore(queue, job.id)
        return score is not None and score > first  # type: ignore[operator]

    await eventually(moved_on, timeout_s=5)  # a beat, a third of the lock later
    assert await redis.zcount(queue, "-inf", int(time.time() * 1000)) == 0
    record = await client.wait(job.id, timeout=30)
    assert record.status is JobStatus.SUCCEEDED and record.attempts == 1
    assert await redis.zscore(queue, job.id) is None


async def test_old_abort_requests_are_pruned(
    redis: Redis, settings: Settings, start_worker: StartWorker
) -> None:
    """Abort requests older than a minute (their jobs long gone) are dropped, by a busy
    worker's every poll and an idle one's first and every 60th; a fresh one is kept (arq's own
    prune never removed anything)."""
    now_ms = int(time.time() * 1000)
    await redis.zadd(KEYS.for_job("stale").abort_key, {"stale": now_ms - 120_000})
    await redis.zadd(KEYS.for_job("fresh").abort_key, {"fresh": now_ms})
    await start_worker()

    async def pruned() -> bool:
        return await redis.zscore(KEYS.for_job("stale").abort_key, "stale") is None

    await eventually(pruned)
    assert await redis.zscore(KEYS.for_job("fresh").abort_key, "fresh") is not None


async def test_a_stopped_worker_gives_up_the_fleets_leases_at_once(
    settings: Settings, redis: Redis, sim: Sim
) -> None:
    """A worker stopping (a rolling restart) deletes the dispatcher's, reconciler's and batch
    lane's leases it holds: the next worker takes them at once. Left to lapse, the dispatcher's
    10 s lease kept a restarted fleet from admitting anything for up to 10 s."""
    from worker.main import build_worker

    leases = [KEYS.dispatcher_lock, KEYS.reconciler_lock, KEYS.lane_lock]
    quick = settings.model_copy(update={"reconcile_interval_s": 0.2})  # takes its lease soon
    worker = build_worker(quick, handle_signals=False)
    running = asyncio.create_task(worker.async_run())

    async def all_held() -> bool:
        return await redis.exists(*leases) == len(leases)

    try:
        await eventually(all_held)
    finally:
        await worker.close()
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert await redis.exists(*leases) == 0


async def test_jobs_held_elsewhere_yet_due_do_not_stand_before_waiting_ones(
    client: Client, redis: Redis, settings: Settings, start_worker: StartWorker
) -> None:
    """Jobs another worker holds but whose places say due (one that does not move them on, as
    a worker of an older release): a claim that finds one held moves it to its lock's expiry,
    so a worker with as few slots as there are of them still reaches the job behind them."""
    stuck = [f"job_held_elsewhere_{n}" for n in range(2)]
    now_ms = int(time.time() * 1000)
    for job_id in stuck:
        await redis.set(settings.keys.in_progress_key(job_id), "another-worker", px=60_000)
        await redis.zadd(settings.keys.for_job(job_id).queue, {job_id: now_ms - 1000})
    await start_worker(settings.model_copy(update={"max_jobs": 2}))
    job = await client.submit(BODY)
    assert (await client.wait(job.id, timeout=20)).status is JobStatus.SUCCEEDED
    for job_id in stuck:
        score = await redis.zscore(settings.keys.for_job(job_id).queue, job_id)
        assert score is not None and score > time.time() * 1000 + 30_000  # at its lock's expiry


async def test_a_beat_moves_on_only_the_jobs_this_worker_holds(
    redis: Redis, settings: Settings
) -> None:
    """The heartbeat extends this worker's locks and moves their jobs on in the queue. A job
    deferred meanwhile (its lock deleted, its new place set) and another worker's job are left
    as they are; after an outage (`retake`) a lapsed lock of this worker's is taken back."""
    from worker.queue.upkeep import beat

    keys = settings.keys
    mine, deferred, other = "job_beat_mine", "job_beat_deferred", "job_beat_other"
    for job_id in (mine, deferred, other):
        await redis.zadd(keys.for_job(job_id).queue, {job_id: 1000})
    await redis.set(keys.in_progress_key(mine), "me", px=5000)
    await redis.set(keys.in_progress_key(other), "them", px=5000)
    await beat(redis, keys, [mine, deferred, other], 15.0, "me")
    now_ms = time.time() * 1000

    async def score(job_id: str) -> float | None:
        return await redis.zscore(keys.for_job(job_id).queue, job_id)

    assert (await score(mine) or 0) > now_ms + 10_000
    assert await redis.pttl(keys.in_progress_key(mine)) > 10_000
    assert await score(deferred) == 1000 and not await redis.exists(keys.in_progress_key(deferred))
    assert await score(other) == 1000 and await redis.pttl(keys.in_progress_key(other)) <= 5000
    await beat(redis, keys, [deferred], 15.0, "me", retake=True)
    assert await redis.get(keys.in_progress_key(deferred)) == b"me"
    assert (await score(deferred) or 0) > now_ms + 10_000
