"""Admission of a run of jobs in one step (worker.dispatch.admit) and the wake that tells idle
workers about them (worker.queue.wake): the two hops between a job's admission and its call."""

from __future__ import annotations

from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection

from msgq.client import Client
from msgq.jobs.store import JobStore
from msgq.settings import Settings
from schemas import JobStatus, Priority
from tests.conftest import KEYS, PARTITIONS, StartWorker, zcard_parts
from worker.dispatch.dispatcher import Dispatcher
from worker.ratelimit import Limits, RateLimiter

BODY = {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": []}


def body(i: int) -> dict[str, Any]:
    return {**BODY, "messages": [{"role": "user", "content": f"job {i}"}]}


async def _script_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("eval", "evalsha")
    )


async def test_a_run_is_admitted_in_one_step_until_capacity_runs_out(
    settings: Settings, client: Client, redis: Redis
) -> None:
    """40 bulk jobs waiting, capacity for 30 (rpm 30): one tick admits exactly 30, each with
    its ticket, in a handful of script calls (one acquire and one move each would be 60); the
    10 left keep their places. A job whose payload vanished before the tick is dropped from the
    scheduler, not admitted: its capacity, taken on the deployment's slot before its partition
    was looked at (worker.dispatch.handoff), goes back and admits the next job at the next
    tick. Fair share is charged for the 30 alone, however many ticks find no
    capacity, so an interactive job that arrives later goes first when capacity returns."""
    custom = settings.model_copy(update={"rate_limits": {"haiku": {"rpm": 30}}})
    limiter = RateLimiter(redis, KEYS, {"haiku": Limits(rpm=30)})
    dispatcher = Dispatcher(redis, JobStore.from_settings(redis, custom), custom, limiter)
    ids = [(await client.submit(body(i), priority="bulk")).id for i in range(41)]
    gone = ids.pop(3)
    await redis.delete(KEYS.arq_job_key(gone))
    calls = await _script_calls(redis)
    wait_s = await dispatcher.tick()
    assert 0 < wait_s <= 1.0  # the class waits for capacity
    # A queueing step a partition, and the gone job's refund, beside the admission steps.
    assert await _script_calls(redis) - calls <= 5 + PARTITIONS
    assert len(await _tickets(redis)) == 29  # the gone job's capacity was given back...
    await dispatcher.tick()
    admitted = await _tickets(redis)
    assert len(admitted) == 30 and admitted < set(ids)  # ...and admitted the 30th
    waiting = {i.decode() for i in await redis.hkeys(KEYS.sched_where)}  # type: ignore[misc]
    assert waiting == set(ids) - admitted
    assert not dispatcher._run.heads  # nothing left collected after the tick
    charged = dispatcher.policy.vtc[("haiku", Priority.BULK)]["_"]
    for _ in range(3):  # no capacity: nothing more, and nothing charged
        await dispatcher.tick()
    assert dispatcher.policy.vtc[("haiku", Priority.BULK)]["_"] == charged
    assert dispatcher.policy.credit[("haiku", Priority.BULK)] == 0.0
    urgent = (await client.submit(body(99), priority="interactive")).id
    await limiter.settle("claude-haiku-4-5", input_delta=0, output_delta=0, requests=1)
    await dispatcher.tick()  # capacity for one job: the interactive one
    assert await _tickets(redis) == {*admitted, urgent}


async def _tickets(redis: Redis) -> set[str]:
    return {i.decode() for i in await redis.zrange(KEYS.tickets_key, 0, -1)}


async def test_an_idle_worker_is_woken_when_a_job_is_made_ready(
    settings: Settings, client: Client, start_worker: StartWorker
) -> None:
    """The worker polls only every 30 s here. The first job may be found by a poll; once it
    has run the worker idles, and the second job starts because the dispatcher's move woke
    the worker, long before the next poll."""
    await start_worker(settings.model_copy(update={"poll_delay_s": 30.0}))
    first = await client.submit(body(1))
    assert (await client.wait(first.id, timeout=40)).status is JobStatus.SUCCEEDED
    second = await client.submit(body(2))
    assert (await client.wait(second.id, timeout=10)).status is JobStatus.SUCCEEDED


class CountingConnection(Connection):
    """A real connection that counts what it sends: one send is one round trip (a pipeline's
    commands go out in one)."""

    sends = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        await super().send_packed_command(command, check_health)


async def test_a_woken_tick_makes_its_first_reads_in_one_round_trip(
    settings: Settings, client: Client, redis: Redis
) -> None:
    """The owed wake's flag cleared, raw producers' inbox, the listed queues and the window's
    reads go in one pipeline (four round trips before): a woken tick that admits one job makes
    6 round trips in all (9 before), its flag cleared as it reads."""
    pool = ConnectionPool.from_url(settings.redis_url, connection_class=CountingConnection)
    counted = Redis(connection_pool=pool)
    store = JobStore.from_settings(counted, settings)
    dispatcher = Dispatcher(counted, store, settings, RateLimiter(counted, KEYS, {}))
    try:
        await client.submit(body(0))
        await dispatcher.tick()  # warm: scripts loaded, the fleet's slots read
        await client.submit(body(1))
        assert await redis.exists(KEYS.sched_woken)  # the submission's wake is owed
        dispatcher.wakes.event.set()  # as its message does
        dispatcher.wakes.taken()
        before = CountingConnection.sends
        await dispatcher.tick()
        trips = CountingConnection.sends - before
        assert not await redis.exists(KEYS.sched_woken)
        assert await zcard_parts(redis, lambda k: k.queue) == 2  # both admitted
        assert trips <= 6, trips
    finally:
        await counted.aclose()
