"""Issue 14: interactive before bulk, tenants by weight, floor share, budgets never overshot.

The dispatcher is driven directly (one `tick`) against a real Redis: with a configured RPM limit
it admits exactly what fits, so what it chose is what landed in arq's queue.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from msgq.audit import audit
from msgq.client import Client
from msgq.connections import connect
from msgq.dev.stack import msgq_command
from msgq.jobs.store import JobStore
from msgq.settings import Settings
from msgq.tenancy.budgets import Budgets, Reservation
from msgq.tenancy.tenants import parse_tenants
from schemas import JobStatus
from tests.conftest import KEYS, Sim, eventually, stop_workers, worker_env, zcard_parts
from tests.test_reconcile_audit import spawn
from worker.dispatch.dispatcher import Dispatcher
from worker.ratelimit import Limits, RateLimiter

BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "share the limit fairly please"}],
}


def tenants_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tenants.toml"
    path.write_text(text)
    return path


async def admitted(redis: Redis, settings: Settings) -> list[str]:
    return [i.decode() for i in await redis.zrange(settings.keys.queue, 0, -1)]


async def dispatcher_for(redis: Redis, settings: Settings, rpm: int) -> Dispatcher:
    await redis.delete(KEYS.bucket_key("haiku"))
    limiter = RateLimiter(redis, KEYS, {"haiku": Limits(rpm=rpm)})
    return Dispatcher(redis, JobStore.from_settings(redis, settings), settings, limiter)


async def test_interactive_jobs_are_admitted_before_queued_bulk(
    settings: Settings, client: Client, redis: Redis
) -> None:
    bulk = [(await client.submit(BODY, priority="bulk")).id for _ in range(20)]
    interactive = [(await client.submit(BODY, priority="interactive")).id for _ in range(3)]
    assert await zcard_parts(redis, lambda k: k.queue) == 0  # waiting in the scheduler
    dispatcher = await dispatcher_for(redis, settings, rpm=5)
    await dispatcher.tick()
    first = await admitted(redis, settings)
    assert len(first) == 5 and set(interactive) <= set(first)
    assert len(set(first) & set(bulk)) == 2


async def test_backlogged_tenants_share_tokens_by_weight(
    settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    """Weights 1:1:2, jobs of 100 / 400 / 200 output tokens, more than one read of each queue:
    the output tokens admitted under a binding OTPM limit split 25 / 25 / 50 (within 10%)."""
    custom = settings.model_copy(
        update={
            "tenants_file": tenants_file(tmp_path, "[tenants.c]\nweight = 2\n"),
            "dispatch_window": 10_000,  # no worker drains arq's queue here
        }
    )
    sizes = {"a": 100, "b": 400, "c": 200}
    async with Client(connect(settings.redis_url), custom) as client:
        owner = {}
        for tenant, size in sizes.items():
            for _ in range(150):
                job = await client.submit({**BODY, "max_tokens": size}, tenant=tenant)
                owner[job.id] = tenant
    await redis.delete(KEYS.bucket_key("haiku"))
    limiter = RateLimiter(redis, KEYS, {"haiku": Limits(otpm=40_000)})
    dispatcher = Dispatcher(redis, JobStore.from_settings(redis, custom), custom, limiter)
    for _ in range(10):
        await dispatcher.tick()
    tokens = Counter()
    for job_id in await admitted(redis, custom):
        tokens[owner[job_id]] += sizes[owner[job_id]]
    total = sum(tokens.values())
    assert total >= 36_000  # the bucket, spent
    shares = {t: tokens[t] / total for t in sizes}
    assert abs(shares["a"] - 0.25) <= 0.025 and abs(shares["b"] - 0.25) <= 0.025, shares
    assert abs(shares["c"] - 0.50) <= 0.05, shares


async def test_bulk_keeps_its_floor_share_while_interactive_is_backlogged(
    settings: Settings, client: Client, redis: Redis
) -> None:
    bulk = {(await client.submit(BODY, priority="bulk")).id for _ in range(100)}
    for _ in range(100):
        await client.submit(BODY, priority="interactive")
    dispatcher = await dispatcher_for(redis, settings, rpm=60)
    await dispatcher.tick()
    got = await admitted(redis, settings)
    served_bulk = len(set(got) & bulk)
    assert len(got) == 60 and 4 <= served_bulk <= 8  # 10% of the tokens, give or take a job


async def test_a_job_placed_while_its_empty_queue_is_unlisted_is_still_dispatched(
    settings: Settings, client: Client, redis: Redis
) -> None:
    """The dispatcher reads a scheduler queue empty and drops it from the backlog; a job placed
    between that read and the drop must keep its queue listed, or no dispatcher reads it again
    and the job stays `queued` for good (seen as a caption job stuck in about one full Sentinel
    run in eight: the three images are submitted while the dispatcher re-reads)."""
    first = await client.submit(BODY, priority="bulk")
    dispatcher = await dispatcher_for(redis, settings, rpm=1000)
    await dispatcher.tick()  # admits it: its queue is now empty, and still listed
    assert await admitted(redis, settings) == [first.id]
    prune = dispatcher._prune
    late: list[str] = []

    async def placed_in_the_window(**kwargs: Any) -> Any:
        if not late:  # after the read that found the queue empty, before the drop
            late.append((await client.submit(BODY, priority="bulk")).id)
        return await prune(**kwargs)

    dispatcher._prune = placed_in_the_window  # type: ignore[method-assign]
    await dispatcher.tick()
    await dispatcher.tick()
    assert late and await admitted(redis, settings) == [first.id, late[0]]


async def test_an_idle_tenant_banks_no_credit(
    settings: Settings, client: Client, redis: Redis
) -> None:
    """a is served alone for a while; when b arrives, they alternate rather than b taking
    everything to catch up."""
    dispatcher = await dispatcher_for(redis, settings, rpm=1000)
    for _ in range(30):
        await client.submit(BODY, tenant="a")
    await dispatcher.tick()
    await redis.delete(settings.keys.queue)
    owner = {}
    for tenant in ("a", "b"):
        for _ in range(40):
            owner[(await client.submit(BODY, tenant=tenant)).id] = tenant
    await redis.hset(KEYS.bucket_key("haiku"), "r", "20")  # room for 20 more now
    await dispatcher.tick()
    share = Counter(owner[i] for i in await admitted(redis, settings))
    assert 20 <= sum(share.values()) <= 22  # the bucket refills a little while the test runs
    assert abs(share["a"] - share["b"]) <= 1


async def test_ten_racers_never_take_a_tenant_past_its_budget(
    redis: Redis, settings: Settings
) -> None:
    """Ten connections race to reserve $0.15 each against a $1 budget: six win, spend ≤ $1."""
    await redis.flushall()
    config = parse_tenants("[tenants.t]\nbudget_usd_day = 1.0\n").get("t")
    racers = [connect(settings.redis_url) for _ in range(10)]
    try:
        outcomes = await asyncio.gather(
            *(Budgets(r, KEYS).reserve("t", config, 0.15) for r in racers for _ in range(2))
        )
    finally:
        for r in racers:
            await r.aclose()
    won = [o for o in outcomes if isinstance(o, Reservation)]
    assert len(won) == 6 and outcomes.count("day") == 14
    usage = await Budgets(redis, KEYS).usage("t", config)
    assert usage["spent_today_usd"] == 0.9 and usage["remaining_today_usd"] == 0.1


async def test_at_the_budget_jobs_wait_or_fail_per_config(
    settings: Settings, redis: Redis, sim: Sim, start_worker: object, tmp_path: Path
) -> None:
    """`fail`: jobs past the budget end failed/budget_exceeded and are never sent. `wait`: they
    stay queued with waiting_reason budget. Spend never passes the budget."""
    text = (
        '[tenants.frugal]\nbudget_usd_day = 0.0015\non_budget = "fail"\n'
        '[tenants.patient]\nbudget_usd_day = 0.0015\non_budget = "wait"\n'
    )
    custom = settings.model_copy(update={"tenants_file": tenants_file(tmp_path, text)})
    await start_worker(custom)  # type: ignore[operator]
    async with Client(connect(settings.redis_url), custom) as client:
        frugal = [(await client.submit(BODY, tenant="frugal")).id for _ in range(6)]
        patient = [(await client.submit(BODY, tenant="patient")).id for _ in range(6)]
        ended = [await client.wait(i, timeout=20) for i in frugal]

        async def waiting() -> bool:
            records = [await client.get(i) for i in patient]
            return all(
                r.status is JobStatus.SUCCEEDED or r.waiting_reason == "budget" for r in records
            ) and any(r.waiting_reason == "budget" for r in records)

        await eventually(waiting)
        records = [await client.get(i) for i in patient]
    statuses = Counter(r.status for r in ended)
    assert statuses[JobStatus.SUCCEEDED] >= 1 and statuses[JobStatus.FAILED] >= 1
    assert all(
        r.error and r.error.type == "budget_exceeded" for r in ended if r.status is JobStatus.FAILED
    )
    assert all(r.status is JobStatus.QUEUED for r in records if r.waiting_reason == "budget")
    budgets = Budgets(redis, KEYS)
    for tenant in ("frugal", "patient"):
        config = parse_tenants(text).get(tenant)
        assert (await budgets.usage(tenant, config))["spent_today_usd"] <= 0.0015
    sent = sum(1 for r in sim.requests() if r["body"]["messages"] == BODY["messages"])
    assert sent == statuses[JobStatus.SUCCEEDED] + sum(
        1 for r in records if r.status is JobStatus.SUCCEEDED
    )


async def test_sigkill_mid_dispatch_loses_nothing_and_runs_nothing_twice(
    settings: Settings, client: Client, redis: Redis, sim: Sim, tmp_path: Path
) -> None:
    """A worker (holding the dispatcher lock) is killed while admitting under a tight RPM
    limit; another takes over: every job ends once, the audit is clean."""
    limited = settings.model_copy(update={"rate_limits": {"haiku": {"rpm": 600}}})
    env = {"MSGQ_RATE_LIMITS": '{"haiku": {"rpm": 600}}'}
    first = spawn(msgq_command("worker"), worker_env(limited, **env), tmp_path / "a.log")
    ids = [(await client.submit(BODY, priority="bulk")).id for _ in range(150)]

    async def dispatching() -> bool:
        return await zcard_parts(redis, lambda k: k.queue) > 0 or sim.received > 10

    await eventually(dispatching)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    second = spawn(msgq_command("worker"), worker_env(limited, **env), tmp_path / "b.log")
    try:
        records = [await client.wait(i, timeout=60) for i in ids]
    finally:
        stop_workers(second)
    assert {r.status for r in records} == {JobStatus.SUCCEEDED}
    assert sim.received - len(ids) <= 16  # only calls in flight at the kill can repeat
    assert (await audit(redis, KEYS)).clean
