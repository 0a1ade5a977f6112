"""Admission under real conditions (issue 21): hostile queue identities, reservations returned
on every path that does not send, the pause and cool-down holding ticketed jobs, deadlines of
jobs waiting in the scheduler, more than 100 calls in flight, and fair share with limits that
are only learned from the API's headers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from msgq.channels import listeners
from msgq.client import Client
from msgq.connections import connect
from msgq.dev.stack import simulator_on_free_port
from msgq.jobs.store import JobStore
from msgq.settings import Settings
from msgq.tenancy.budgets import Budgets
from msgq.tenancy.tenants import parse_tenants
from schemas import JobRecord, JobStatus
from tests.conftest import KEYS, Sim, StartWorker, eventually, zcard_parts
from tests.test_dispatch_pacing import take
from tests.test_fair_share import tenants_file
from tests.test_webhooks import SECRET as WEBHOOK_SECRET
from worker.dispatch.dispatcher import Dispatcher
from worker.ratelimit import Limits, RateLimiter

BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Hello"}],
}
HOSTILE_MODELS = ["claude:x", "a:", "evil:interactive"]


def body(model: str = "claude-haiku-4-5", text: str = "Hello") -> dict[str, Any]:
    return {**BODY, "model": model, "messages": [{"role": "user", "content": text}]}


@pytest.fixture
def slow_simulator(request: pytest.FixtureRequest) -> Iterator[str]:
    """A simulator of its own: `request.param` is its extra arguments (latency, limits)."""
    with simulator_on_free_port(*getattr(request, "param", [])) as url:
        yield url


async def _all_ended(client: Client, ids: list[str]) -> list[JobRecord]:
    return [await client.wait(i, timeout=30) for i in ids]


async def test_hostile_model_names_end_their_own_job_and_stop_no_one_else(
    settings: Settings,
    client: Client,
    redis: Redis,
    sim: Sim,
    start_worker: StartWorker,
    api: httpx.AsyncClient,
) -> None:
    """A model name is caller input: through the client, the HTTP API and raw Redis, names that
    once broke the dispatcher's key parsing (every tick failed; a job stranded; a bulk job
    scheduled as interactive for another tenant) each end their own job, and a well-formed
    job of another tenant submitted after them still succeeds."""
    await start_worker()
    hostile: list[str] = []
    for model in HOSTILE_MODELS:
        hostile.append((await client.submit(body(model), tenant="bulk", priority="bulk")).id)
        answer = await api.post("/v1/jobs", json={"request": body(model)})
        assert answer.status_code == 202, answer.text
        hostile.append(f"tenant-a:{answer.json()['id']}")  # stored under its tenant
        raw_id = f"raw-{len(hostile)}"
        payload = {"t": 1, "f": "run_message", "a": [], "et": int(time.time() * 1000)}
        payload["k"] = {"request": body(model), "tenant": "bulk", "priority": "bulk"}
        await redis.set(KEYS.arq_job_key(raw_id), json.dumps(payload))
        await redis.zadd(KEYS.sched_inbox, {raw_id: int(time.time() * 1000)})
        hostile.append(f"bulk:{raw_id}")  # a raw job naming a tenant is stored as tenant:id
    good = await client.submit(body(), tenant="acme")
    assert (await client.wait(good.id, timeout=20)).status is JobStatus.SUCCEEDED

    async def all_recorded() -> bool:  # raw jobs get their record when a worker takes them
        return all([await redis.exists(KEYS.record_key(i)) for i in hostile])

    await eventually(all_recorded, timeout_s=30)
    ended = await _all_ended(client, hostile)
    assert all(r.status.terminal for r in ended)
    evil = [r for r in ended if r.model == "evil:interactive" and r.tenant == "bulk"]
    assert evil and all(r.priority == "bulk" for r in evil)


async def test_every_path_that_does_not_send_returns_its_reservation(
    settings: Settings,
    client: Client,
    redis: Redis,
    sim: Sim,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    """Jobs admitted with tickets (rate-limit capacity and budget reserved) are then held back
    by a cool-down (deferred at pick-up) or canceled before any worker sees them. Every ticket is
    settled once: no ticket is left, and the budget's spend equals the sum of the jobs' costs."""
    text = '[tenants.acme]\nbudget_usd_day = 5.0\non_budget = "wait"\n'
    custom = settings.model_copy(
        update={
            "tenants_file": tenants_file(tmp_path, text),
            "rate_limits": {"haiku": {"rpm": 6000}},
        }
    )
    limiter = RateLimiter(redis, KEYS, {"haiku": Limits(rpm=6000)})
    dispatcher = Dispatcher(redis, JobStore.from_settings(redis, custom), custom, limiter)
    async with Client(connect(settings.redis_url), custom) as producer:
        ids = [(await producer.submit(body(), tenant="acme")).id for _ in range(12)]
        await dispatcher.tick()  # admitted: each holds a ticket, no worker runs yet
        assert await zcard_parts(redis, lambda k: k.tickets_key) == 12
        canceled = ids[:3]
        for job_id in canceled:
            await producer.cancel(job_id)
        await limiter.cool_down("claude-haiku-4-5", 1.5)  # the rest are deferred at pick-up
        await start_worker(custom)
        ended = await _all_ended(producer, ids)
    assert [r.status for r in ended[:3]] == [JobStatus.CANCELED] * 3
    assert all(r.status is JobStatus.SUCCEEDED for r in ended[3:])

    async def settled() -> bool:
        return await zcard_parts(redis, lambda k: k.tickets_key) == 0

    await eventually(settled, timeout_s=20)  # the canceled ones: the orphan sweep
    assert all([await redis.exists(KEYS.admitted_key(i)) == 0 for i in ids])
    usage = await Budgets(redis, KEYS).usage("acme", parse_tenants(text).get("acme"))
    costs = sum(r.cost_usd or 0.0 for r in ended)
    assert costs > 0
    assert usage["spent_today_usd"] == pytest.approx(costs, abs=1e-6)


async def test_paused_or_cooling_fleet_sends_nothing_ticket_or_not(
    settings: Settings, client: Client, redis: Redis, sim: Sim, start_worker: StartWorker
) -> None:
    """Jobs admitted before a pause (holding tickets) and jobs submitted during it: nothing is
    sent until the pause is lifted; then all succeed."""
    custom = settings.model_copy(update={"rate_limits": {"haiku": {"rpm": 6000}}})
    limiter = RateLimiter(redis, KEYS, {"haiku": Limits(rpm=6000)})
    dispatcher = Dispatcher(redis, JobStore.from_settings(redis, custom), custom, limiter)
    admitted = [(await client.submit(body())).id for _ in range(4)]
    await dispatcher.tick()
    assert await zcard_parts(redis, lambda k: k.tickets_key) == 4
    await limiter.pause("spend limit (test)", None)
    await start_worker(custom)
    later = [(await client.submit(body(text="later"))).id for _ in range(4)]

    async def tickets_back() -> bool:  # every admitted job was picked up and handed back
        return await zcard_parts(redis, lambda k: k.tickets_key) == 0

    await eventually(tickets_back)
    records = [await client.get(i) for i in admitted + later]
    assert all(r.status is JobStatus.QUEUED for r in records)
    assert sim.received == 0
    await limiter.resume()
    ended = await _all_ended(client, admitted + later)
    assert all(r.status is JobStatus.SUCCEEDED for r in ended)


async def test_resuming_wakes_the_dispatcher_at_once(settings: Settings, redis: Redis) -> None:
    """A paused dispatcher looks again only each second; the resume itself wakes it, so a
    fleet's hundreds of slots do not sit idle for that second."""
    limiter = RateLimiter(redis, KEYS, {})
    dispatcher = Dispatcher(redis, JobStore.from_settings(redis, settings), settings, limiter)
    wake = dispatcher.wakes
    listener = asyncio.create_task(wake.listen())
    try:

        async def subscribed() -> bool:
            return await listeners(redis, KEYS, KEYS.sched_wake) > 0

        await eventually(subscribed)
        await asyncio.wait_for(wake.event.wait(), 5)  # the subscription's own wake
        await take(wake, redis)  # taken, as a tick would
        await limiter.pause("spend limit (test)", None)
        assert not wake.event.is_set()
        assert await limiter.resume() is True
        await asyncio.wait_for(wake.event.wait(), 5)
        assert await limiter.paused() is None
    finally:
        listener.cancel()


async def test_a_job_waiting_for_budget_in_the_scheduler_expires_at_its_deadline(
    settings: Settings, client: Client, sim: Sim, start_worker: StartWorker, tmp_path: Path
) -> None:
    """The tenant's budget admits one job; the next waits for budget in the scheduler. Its
    deadline still ends it `expired`, never sent."""
    text = '[tenants.thrifty]\nbudget_usd_day = 0.0004\non_budget = "wait"\n'
    custom = settings.model_copy(update={"tenants_file": tenants_file(tmp_path, text)})
    await start_worker(custom)
    async with Client(connect(settings.redis_url), custom) as producer:
        first = await producer.submit(body(), tenant="thrifty")
        assert (await producer.wait(first.id, timeout=20)).status is JobStatus.SUCCEEDED
        deadline = datetime.now(UTC) + timedelta(seconds=2)
        late = await producer.submit(body(text="late"), tenant="thrifty", deadline=deadline)

        async def waiting_for_budget() -> bool:
            return (await producer.get(late.id)).waiting_reason == "budget"

        await eventually(waiting_for_budget)
        record = await producer.wait(late.id, timeout=15)
    assert record.status is JobStatus.EXPIRED
    assert record.finished_at is not None and record.finished_at >= deadline
    assert record.finished_at - deadline < timedelta(seconds=5)
    assert sim.received == 1


@pytest.mark.parametrize("slow_simulator", [["--latency-ms", "3000"]], indirect=True)
@pytest.mark.parametrize("scheduler", [True, False])
async def test_the_fleet_runs_more_than_100_calls_at_a_time(
    settings: Settings,
    client: Client,
    redis: Redis,
    slow_simulator: str,
    start_worker: StartWorker,
    scheduler: bool,
) -> None:
    """At 3 s a call, two workers of 96 slots run more than 100 calls at once: no fixed window
    (the dispatcher's old 64) and no read limit (arq's old 100 oldest entries, running ones
    included) caps the fleet."""
    custom = settings.model_copy(
        update={"anthropic_base_url": slow_simulator, "scheduler": scheduler, "max_jobs": 96}
    )
    await start_worker(custom)
    await start_worker(custom)
    store = JobStore.from_settings(redis, custom)
    async with Client(connect(settings.redis_url), custom) as producer:
        submitted = await asyncio.gather(*(producer.submit(body(text=f"n{n}")) for n in range(400)))
        ids = [job.id for job in submitted]
        peak = 0

        async def many_in_flight() -> bool:
            nonlocal peak
            records = await store.get_many(ids)
            running = sum(1 for r in records if r and r.status is JobStatus.IN_PROGRESS)
            peak = max(peak, running)
            return running > 100

        await eventually(many_in_flight, timeout_s=60)  # slow start: 32, 64, 128 in flight
        ended = await _all_ended(producer, ids)
    assert peak > 100
    assert all(r.status is JobStatus.SUCCEEDED for r in ended)


@pytest.mark.parametrize("slow_simulator", [["--rpm", "120", "--latency-ms", "500"]], indirect=True)
async def test_with_learned_limits_an_interactive_job_starts_within_seconds_behind_a_backlog(
    settings: Settings, redis: Redis, slow_simulator: str, start_worker: StartWorker
) -> None:
    """Nothing configured in msgq: the limit (120 RPM) is learned from headers. Behind 400
    queued bulk jobs, an interactive job submitted once the limit is known starts within a
    couple of seconds (the old path: 8.6-44.6 s, behind the window and the slots of bulk jobs
    waiting in the limiter)."""
    custom = settings.model_copy(update={"anthropic_base_url": slow_simulator})
    await start_worker(custom)
    limiter = RateLimiter(redis, KEYS, {})
    async with Client(connect(settings.redis_url), custom) as producer:
        bulk = [(await producer.submit(body(text=f"b{n}"), priority="bulk")).id for n in range(400)]

        async def learned() -> bool:
            return await limiter.known("haiku")

        await eventually(learned, timeout_s=20)
        urgent = await producer.submit(body(text="urgent"), priority="interactive")
        record = await producer.wait(urgent.id, timeout=30)
        assert record.status is JobStatus.SUCCEEDED and record.started_at is not None
        waited = (record.started_at - record.created_at).total_seconds()
        assert waited <= 3.0, waited
        records = [await producer.get(i) for i in bulk]
    queued = sum(1 for r in records if r.status is JobStatus.QUEUED)
    assert queued > 100  # the backlog was still there when the interactive job ran


async def test_fleet_policy_is_the_fleets_not_the_producers_environment(
    settings: Settings, redis: Redis, sim: Sim, start_worker: StartWorker, tmp_path: Path
) -> None:
    """Workers run with the tenants file and the scheduler off. A producer started without the
    file and with the scheduler on still gives acme's job acme's priority and webhook, and its
    job is not stranded in a scheduler queue no dispatcher admits from."""
    text = (
        '[tenants.acme]\ndefault_priority = "interactive"\n'
        'callback_url = "http://127.0.0.1:9/hooks/acme"\n'
    )
    fleet = settings.model_copy(
        update={
            "tenants_file": tenants_file(tmp_path, text),
            "scheduler": False,
            "webhook_allow": "127.0.0.1/32",
            # A fleet that can sign the webhook: without a secret the callback is refused.
            "webhook_secret": SecretStr(WEBHOOK_SECRET),
        }
    )
    await start_worker(fleet)

    async def published() -> bool:
        return await redis.exists(KEYS.fleet_policy) == 1

    await eventually(published)
    producer_settings = fleet.model_copy(update={"scheduler": True, "tenants_file": None})
    async with Client(connect(settings.redis_url), producer_settings) as producer:
        job = await producer.submit(body(), tenant="acme")
        assert job.record.priority == "interactive"
        assert job.record.callback_url == "http://127.0.0.1:9/hooks/acme"
        record = await producer.wait(job.id, timeout=20)
    assert record.status is JobStatus.SUCCEEDED


async def test_a_job_a_producer_placed_in_the_scheduler_runs_on_a_fleet_without_it(
    settings: Settings, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """Before any worker published the fleet's policy, a producer with the scheduler on placed
    a job in a scheduler queue; the fleet runs with the scheduler off. The job still runs."""
    job = await client.submit(body())  # no policy yet: the producer's own setting (on)
    fleet = client.settings.model_copy(update={"scheduler": False})
    await start_worker(fleet)
    assert (await client.wait(job.id, timeout=20)).status is JobStatus.SUCCEEDED


@pytest.mark.parametrize("slow_simulator", [["--latency-ms", "300"]], indirect=True)
async def test_in_flight_work_is_bounded_by_payload_bytes(
    settings: Settings, redis: Redis, slow_simulator: str, start_worker: StartWorker
) -> None:
    """A worker with room for 64 jobs but a byte budget smaller than one payload runs one job
    at a time (one always runs, whatever its size)."""
    custom = settings.model_copy(
        update={"anthropic_base_url": slow_simulator, "max_jobs": 64, "max_inflight_bytes": 100}
    )
    await start_worker(custom)
    store = JobStore.from_settings(redis, custom)
    async with Client(connect(settings.redis_url), custom) as producer:
        ids = [(await producer.submit(body(text=f"p{n}"))).id for n in range(6)]
        peak = 0

        async def all_done() -> bool:
            nonlocal peak
            records = await store.get_many(ids)
            peak = max(peak, sum(1 for r in records if r and r.status is JobStatus.IN_PROGRESS))
            return all(r is not None and r.status.terminal for r in records)

        await eventually(all_done, timeout_s=30)
    assert peak == 1
