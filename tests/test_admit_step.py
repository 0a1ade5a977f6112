"""The dispatcher's batched admission step (`worker.dispatch.admit.ADMIT_MANY`) on a real Redis:
it reads the class's bucket once and writes it back once, and each job in the run still sees
what the jobs before it took, exactly as one `acquire` a job would."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from msgq.script_calls import declare
from tests.conftest import KEYS
from worker.dispatch.admit import ADMIT_MANY, STEP_WIDTH
from worker.ratelimit import RateLimiter
from worker.ratelimit_scripts import ACQUIRE

BUCKET = KEYS.prefix + "ratelimit:test"
GATES = [BUCKET, KEYS.prefix + "ratelimit:test:cooldown", KEYS.prefix + "pause"]
QUEUE = KEYS.prefix + "sched:q:test"
SCHED = [KEYS.prefix + "sched:where", KEYS.prefix + "sched:est", KEYS.prefix + "sched:deadlines"]


def step(now_ms: int, job_id: str, rpm: int = 3, output: int = 10) -> list[object]:
    """One request of `output` tokens under `rpm` requests and 100 output tokens a minute."""
    return [now_ms, 1, 0, output, rpm, 0, 100, job_id, 60_000, 1_000, 0.5]


def test_a_runs_arguments_are_as_wide_as_the_limiters_step(redis: Redis) -> None:
    """ADMIT_MANY reads each job's arguments by place: the queue's, then the limiter's step."""
    limiter = RateLimiter(redis, KEYS, {})
    args = limiter.step_args("claude-haiku-4-5", now_ms=1, cost=(1, 1), holder="j")
    assert len(args) + 1 == STEP_WIDTH == len(step(1, "j")) + 1


async def test_a_run_takes_from_one_read_of_the_bucket_in_order(redis: Redis) -> None:
    now = int(time.time() * 1000)
    jobs = [f"j{n}" for n in range(5)]
    await redis.zadd(QUEUE, {job: n for n, job in enumerate(jobs)})
    for job in jobs:  # the scheduler's other entries of each job
        await redis.hset(SCHED[0], job, QUEUE)  # type: ignore[misc]
        await redis.hset(SCHED[1], job, "{}")  # type: ignore[misc]
        await redis.zadd(SCHED[2], {job: now + 60_000})
    keys = [*GATES, *SCHED]
    args: list[object] = []
    for job in jobs:
        args += [declare(keys, QUEUE), *step(now, job)]
    admit = redis.register_script(ADMIT_MANY)
    statuses, counts, wait_ms, why = await admit(keys=keys, args=args)
    assert statuses == [1, 1, 1] and counts == [1, 2, 3]  # the 4th finds the 3 requests gone
    assert wait_ms > 0 and why == b"r"
    bucket = await redis.hgetall(BUCKET)
    assert float(bucket[b"r"]) == 0 and float(bucket[b"o"]) == 70 and bucket[b"n"] == b"3"
    assert await redis.zrange(QUEUE, 0, -1) == [b"j3", b"j4"]  # the rest keep their place
    for entries in (await redis.hkeys(SCHED[0]), await redis.hkeys(SCHED[1])):  # type: ignore[misc]
        assert sorted(entries) == [b"j3", b"j4"]
    assert await redis.zrange(SCHED[2], 0, -1) == [b"j3", b"j4"]
    # A single acquire now sees what the run wrote: still no request left.
    single = redis.register_script(ACQUIRE)
    reply = await single(keys=GATES, args=(step(now, "j3")))
    assert reply[0] > 0 and reply[1] == b"r"


async def test_a_large_request_that_must_wait_holds_and_the_next_acquire_respects_it(
    redis: Redis,
) -> None:
    """The hold a run writes (in memory, then saved) is what the next acquire meets."""
    now = int(time.time() * 1000)
    await redis.hset(BUCKET, mapping={"r": 100, "o": 40, "t": now})
    await redis.zadd(QUEUE, {"big": 1, "small": 2})
    keys = [*GATES, *SCHED]
    args = [declare(keys, QUEUE), *step(now, "big", rpm=100, output=80)]
    admit = redis.register_script(ADMIT_MANY)
    statuses, _, wait_ms, _ = await admit(keys=keys, args=args)
    assert statuses == [] and wait_ms > 0
    assert (await redis.hget(BUCKET, "hold")) == b"big"
    # A small one may take only what leaves the big one's need: 40 - 30 < 80, so it waits too.
    single = redis.register_script(ACQUIRE)
    reply = await single(keys=GATES, args=(step(now, "small", rpm=100, output=30)))
    assert reply[0] > 0


async def test_the_holder_admitted_in_a_run_clears_its_hold_for_the_jobs_after_it(
    redis: Redis,
) -> None:
    """A live hold of "big": admitted first in the run, its hold fields are deleted (set to
    false in memory, then HDEL) and the small job after it takes what is left."""
    now = int(time.time() * 1000)
    hold = {"hold": "big", "hr": 1, "hi": 0, "ho": 80, "hu": now + 60_000}
    await redis.hset(BUCKET, mapping={"r": 100, "o": 100, "t": now, **hold})
    await redis.zadd(QUEUE, {"big": 1, "small": 2})
    keys = [*GATES, *SCHED]
    args: list[object] = []
    for job, output in (("big", 80), ("small", 20)):
        args += [declare(keys, QUEUE), *step(now, job, rpm=100, output=output)]
    admit = redis.register_script(ADMIT_MANY)
    statuses, counts, wait_ms, _ = await admit(keys=keys, args=args)
    assert statuses == [1, 1] and counts == [1, 2] and wait_ms == 0
    bucket = await redis.hgetall(BUCKET)
    assert not {b"hold", b"hr", b"hi", b"ho", b"hu"} & set(bucket)
    assert float(bucket[b"o"]) == 0 and float(bucket[b"r"]) == 98


async def test_an_error_part_way_keeps_what_the_jobs_before_it_took(redis: Redis) -> None:
    """The second job's queue is of the wrong type: the step fails, but the first job, already
    out of the scheduler, keeps what it took from the bucket (saved before the error)."""
    now = int(time.time() * 1000)
    broken = KEYS.prefix + "sched:q:broken"
    await redis.set(broken, "not a sorted set")
    await redis.zadd(QUEUE, {"first": 1})
    keys = [*GATES, *SCHED]
    args = [declare(keys, QUEUE), *step(now, "first"), declare(keys, broken), *step(now, "second")]
    admit = redis.register_script(ADMIT_MANY)
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await admit(keys=keys, args=args)
    assert await redis.zrange(QUEUE, 0, -1) == []  # the first left the scheduler
    assert await redis.hget(BUCKET, "n") == b"1" and float(await redis.hget(BUCKET, "r")) == 2
