"""Issue 31: every reservation a job holds lives in its ledger in Redis and is settled once,
whatever the ending: a cancel mid-call, a shutdown cut, a worker killed mid-call, an answer.
A tenant's spend counter always equals what its jobs cost plus what is still reserved."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

from redis.asyncio import Redis

from msgq.audit import audit
from msgq.client import Client
from msgq.connections import connect
from msgq.dev.stack import msgq_command
from msgq.ledger import budget_mismatches
from msgq.settings import Settings
from msgq.tenancy.budgets import MICRO, Budgets, periods
from msgq.tenancy.tenants import parse_tenants
from schemas import JobStatus
from tests.conftest import KEYS, Sim, StartWorker, eventually, stop_workers, worker_env, zcard_parts
from tests.test_fair_share import tenants_file

BIG = {  # a large reservation (all of max_tokens at sonnet's output price): a leak shows
    "model": "claude-sonnet-4-5",
    "max_tokens": 8000,
    "messages": [{"role": "user", "content": "a long answer, please"}],
}
PAYER = "[tenants.payer]\nbudget_usd_day = 5.0\n"


async def spent_micro_usd(redis: Redis, tenant: str) -> int:
    return int(await redis.get(KEYS.spend_key(tenant, periods()[0])) or 0)


async def settled_cleanly(redis: Redis) -> None:
    """No ledger left open, and every spend counter is cost plus open reservations."""
    assert await zcard_parts(redis, lambda k: k.ledger_open) == 0
    assert await budget_mismatches(redis, KEYS, periods()[0]) == []
    assert (await audit(redis, KEYS)).clean


def spawn(settings: Settings, log: Path, **env: str) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    command = msgq_command("worker")
    return subprocess.Popen(command, env=worker_env(settings, **env), stdout=out, stderr=out)


def with_tenants(settings: Settings, tmp_path: Path, text: str, **update: object) -> Settings:
    return settings.model_copy(update={"tenants_file": tenants_file(tmp_path, text), **update})


async def in_flight(sim: Sim, count: int = 1) -> None:
    async def sent() -> bool:
        return sim.received == count

    await eventually(sent)


async def test_cancel_mid_call_gives_the_budget_back(
    settings: Settings, redis: Redis, sim: Sim, start_worker: StartWorker, tmp_path: Path
) -> None:
    """Canceled while the API works on it: nothing was billed, so nothing stays spent."""
    custom = with_tenants(settings, tmp_path, PAYER)
    sim.script({"delay_s": 30})
    await start_worker(custom)
    async with Client(connect(settings.redis_url), custom) as client:
        job = await client.submit(BIG, tenant="payer")
        await in_flight(sim)
        assert await spent_micro_usd(redis, "payer") > 0  # the reservation, while it runs
        await client.cancel(job.id)
        assert (await client.wait(job.id, timeout=20)).status is JobStatus.CANCELED

    async def refunded() -> bool:
        return await spent_micro_usd(redis, "payer") == 0

    await eventually(refunded)
    await settled_cleanly(redis)


async def cut_then_rerun(
    settings: Settings, redis: Redis, sim: Sim, tmp_path: Path, sig: signal.Signals
) -> None:
    """A worker stopped by `sig` mid-call, then another runs the job: the tenant is charged
    exactly what the answered call cost, nothing for the cut one."""
    custom = with_tenants(settings, tmp_path, PAYER)
    env = {"MSGQ_TENANTS_FILE": str(custom.tenants_file), "MSGQ_SHUTDOWN_GRACE_S": "1"}
    sim.script({"delay_s": 30})
    first = spawn(custom, tmp_path / "a.log", **env)
    try:
        async with Client(connect(settings.redis_url), custom) as client:
            job = await client.submit(BIG, tenant="payer")
            await in_flight(sim)
            first.send_signal(sig)
            await asyncio.to_thread(first.wait, 20)
            second = spawn(custom, tmp_path / "b.log", **env)
            try:
                record = await client.wait(job.id, timeout=60)
            finally:
                await asyncio.to_thread(stop_workers, second)
    finally:
        if first.poll() is None:
            first.kill()
    assert record.status is JobStatus.SUCCEEDED and record.cost_usd
    assert sim.received == 2
    assert await spent_micro_usd(redis, "payer") == round(record.cost_usd * MICRO)
    await settled_cleanly(redis)


async def test_shutdown_cut_past_the_grace_period_leaks_no_budget(
    settings: Settings, redis: Redis, sim: Sim, tmp_path: Path
) -> None:
    await cut_then_rerun(settings, redis, sim, tmp_path, signal.SIGTERM)


async def test_a_worker_killed_mid_call_leaks_no_budget(
    settings: Settings, redis: Redis, sim: Sim, tmp_path: Path
) -> None:
    await cut_then_rerun(settings, redis, sim, tmp_path, signal.SIGKILL)


async def test_share_cap_bucket_is_settled_with_the_real_usage(
    settings: Settings, redis: Redis, sim: Sim, start_worker: StartWorker, tmp_path: Path
) -> None:
    """otpm_share 0.5 of 2,000 OTPM, six jobs of max_tokens 500 that produce a few dozen
    tokens: each answer gives back what it did not use, so all six run at once rather than
    two a minute (the bucket used to keep every job's whole estimate)."""
    text = "[tenants.shy]\notpm_share = 0.5\n"
    limits = {"rate_limits": {"haiku": {"otpm": 2000}}}
    custom = with_tenants(settings, tmp_path, text, **limits)
    await start_worker(custom)
    body = {"model": "claude-haiku-4-5", "max_tokens": 500, "messages": BIG["messages"]}
    async with Client(connect(settings.redis_url), custom) as client:
        ids = [(await client.submit(body, tenant="shy")).id for _ in range(6)]
        records = [await client.wait(i, timeout=30) for i in ids]
    assert {r.status for r in records} == {JobStatus.SUCCEEDED}
    assert all(r.usage and r.usage.output_tokens < 500 for r in records)
    await settled_cleanly(redis)


async def test_audit_finds_a_spend_counter_its_ledger_does_not_explain(
    settings: Settings, redis: Redis, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """The check can fail: money counted as reserved that no ledger, ticket or lane holds."""
    config = parse_tenants(PAYER).get("payer")
    reservation = await Budgets(redis, KEYS).reserve("payer", config, 0.25)  # held by nobody
    assert not isinstance(reservation, str)
    report = await audit(redis, KEYS)
    assert "budget spend counter differs from its ledger" in report.as_dict()["violations"]
    await Budgets(redis, KEYS).reserve("payer", config, 0.25, hold="job-x")  # held by a ledger
    assert await zcard_parts(redis, lambda k: k.ledger_open) == 1
    assert await budget_mismatches(redis, KEYS, periods()[0]) == [
        ("payer", 500_000, 250_000)  # the held one is explained, the first is not
    ]
