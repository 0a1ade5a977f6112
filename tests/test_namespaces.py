"""One deployment, one namespace (issue 31 item 4): deployments that share a Redis database never
see each other's jobs, tenants, limits or budgets, and a worker never sends a job under the API
key of a deployment it was not submitted to. The default namespace keeps msgq's original key
names, so existing deployments keep their data."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr, ValidationError
from redis.asyncio import Redis

from msgq.audit import audit
from msgq.client import Client
from msgq.connections import connect
from msgq.dev.simulator.state import mask_key
from msgq.dev.stack import msgq_command
from msgq.http.app import create_app
from msgq.keys import Keyspace, keyspace
from msgq.settings import Settings
from msgq.tenancy.budgets import Budgets, Reservation
from msgq.tenancy.tenants import parse_tenants
from schemas import JobStatus
from tests.conftest import KEYS, Sim, StartWorker, eventually
from tests.test_ui import ADMIN_KEY, sign_in
from worker.ratelimit import Limits, RateLimiter

KEY_ONE, KEY_TWO = "keyA-deployment-one-aa", "keyB-deployment-two-bb"
HAIKU = "claude-haiku-4-5"


def body(text: str) -> dict[str, Any]:
    return {"model": HAIKU, "max_tokens": 20, "messages": [{"role": "user", "content": text}]}


def deployment(settings: Settings, namespace: str, api_key: str = KEY_ONE) -> Settings:
    return settings.model_copy(
        update={"namespace": namespace, "anthropic_api_key": SecretStr(api_key)}
    )


def sent(sim: Sim) -> list[tuple[str, str]]:
    """(prompt, masked API key) of every Messages call the simulator received."""
    return [
        (str(r["body"]["messages"][0]["content"]), str(r["headers"].get("x-api-key")))
        for r in sim.requests()
        if r["path"] == "/v1/messages" and r["body"]
    ]


def msgq(
    settings: Settings, *args: str, namespace: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {"REDIS_URL": settings.redis_url, "PATH": "/usr/bin:/bin"}
    if namespace is not None:
        env["MSGQ_NAMESPACE"] = namespace
    return subprocess.run(
        msgq_command(*args), capture_output=True, text=True, env=env, timeout=60, check=False
    )


async def amsgq(
    settings: Settings, *args: str, namespace: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI from an async test: in a thread, so in-process workers keep running."""
    return await asyncio.to_thread(msgq, settings, *args, namespace=namespace)


# ---------------------------------------------------------------- key names


def test_the_default_namespace_keeps_todays_key_names() -> None:
    """Existing deployments keep their data: the names msgq and arq always used, literally."""
    for keys in (
        KEYS,
        Settings(_env_file=None).keys,
        Settings(_env_file=None, queue_name="msgq:queue").keys,
    ):
        assert keys.namespace == "msgq"
        assert keys.queue == "msgq:queue"
        assert keys.record_key("j1") == "msgq:job:j1"
        assert keys.arq_job_key("j1") == "arq:job:j1"
        assert keys.in_progress_key("j1") == "arq:in-progress:j1"
        assert keys.retry_key("j1") == "arq:retry:j1"
        assert keys.abort_key == "arq:abort"
        assert keys.health_check_key == "msgq:queue:health-check"
        assert keys.index_key == "msgq:jobs"
        assert keys.tenant_jobs_key("acme") == "msgq:tenant:acme:jobs"
        assert keys.sched_where == "msgq:sched:where"
        assert keys.sched_inbox == "msgq:sched:inbox"
        assert keys.bucket_key("haiku") == "msgq:ratelimit:haiku"
        assert keys.spend_key("acme", "d20261206") == "msgq:spend:acme:d20261206"
        assert keys.spend_applied_key("acme", "n1") == "msgq:spend:applied:n1"
        assert keys.fleet_workers == "msgq:fleet:workers"
        assert keys.fleet_policy == "msgq:fleet:policy"
        assert keys.lane_pool == "msgq:lane:pool"
        assert keys.webhooks_key == "msgq:webhooks"
        assert keys.done_channel == "msgq:done"


def test_another_namespace_puts_every_key_under_its_own_prefix() -> None:
    """`MSGQ_NAMESPACE=two` (or the older `MSGQ_QUEUE_NAME=msgq:two`): everything under
    `msgq@two:`, arq's keys included; names that cannot be told apart are refused."""
    two = Keyspace("two")
    assert two.queue == "msgq@two:queue"
    assert two.record_key("j1") == "msgq@two:job:j1"
    assert two.arq_job_key("j1") == "msgq@two:arq:job:j1"
    assert two.in_progress_key("j1") == "msgq@two:arq:in-progress:j1"
    assert two.retry_key("j1") == "msgq@two:arq:retry:j1"
    assert two.abort_key == "msgq@two:arq:abort"
    assert two.health_check_key == "msgq@two:queue:health-check"
    assert two.sched_inbox == "msgq@two:sched:inbox"
    assert Settings(_env_file=None, namespace="two").keys == two
    assert Settings(_env_file=None, queue_name="msgq:two").keys == two
    assert Settings(_env_file=None, queue_name="two", namespace="two").keys == two
    with pytest.raises(ValidationError, match="disagree"):
        Settings(_env_file=None, namespace="one", queue_name="msgq:two")
    for bad in ("a:b", "", "msgq@x", "{tag}", "x" * 65):
        with pytest.raises(ValidationError):
            Settings(_env_file=None, namespace=bad)
    with pytest.raises(ValidationError, match="MSGQ_NAMESPACE"):
        Settings(_env_file=None, queue_name="queue:with:colons")


async def test_a_default_deployments_job_is_stored_under_todays_names(
    client: Client, redis: Redis
) -> None:
    job = await client.submit(body("where am I"), job_id="here-1")
    assert await redis.exists("msgq:job:here-1", "arq:job:here-1") == 2
    where = await redis.hget("msgq:sched:where", "here-1")  # type: ignore[misc]
    assert where is not None and where.startswith(b"msgq:sched:q:")  # the scheduler's queue
    assert await redis.zscore("msgq:jobs", job.id) is not None


# ---------------------------------------------------------------- workers and producers


async def test_each_deployment_runs_only_its_own_jobs_under_its_own_api_key(
    settings: Settings, sim: Sim, start_worker: StartWorker
) -> None:
    """Two deployments, same job IDs, one Redis database: each worker sends exactly its own
    deployment's jobs, with its own API key, and neither job ID collides."""
    one, two = deployment(settings, "one", KEY_ONE), deployment(settings, "two", KEY_TWO)
    await start_worker(one)
    await start_worker(two)
    ids = [f"same-{n}" for n in range(6)]
    async with (
        Client(connect(settings.redis_url), one) as c1,
        Client(connect(settings.redis_url), two) as c2,
    ):
        for job_id in ids:
            await c1.submit(body(f"for one {job_id}"), job_id=job_id)
            await c2.submit(body(f"for two {job_id}"), job_id=job_id)
        for client in (c1, c2):
            for job_id in ids:
                record = await client.wait(job_id, timeout=30)
                assert record.status is JobStatus.SUCCEEDED, record.error
    calls = sent(sim)
    assert sorted(p for p, _ in calls) == sorted(
        [f"for one {i}" for i in ids] + [f"for two {i}" for i in ids]
    )
    for prompt, key in calls:
        assert key == mask_key(KEY_ONE if prompt.startswith("for one") else KEY_TWO), prompt


async def test_a_worker_leaves_other_namespaces_jobs_alone_and_producers_are_warned(
    settings: Settings, sim: Sim, start_worker: StartWorker
) -> None:
    """The reported leak: a worker with `MSGQ_QUEUE_NAME=msgq:other` ran the default queue's
    jobs. Now that worker serves namespace `other` only (the older name still works), and a
    producer whose namespace has no worker is told so."""
    legacy = settings.model_copy(update={"queue_name": "msgq:other"})
    await start_worker(legacy)
    other = deployment(settings, "other")
    async with Client(connect(settings.redis_url), other) as c_other:
        await eventually(lambda: _alive(c_other))
        async with Client(connect(settings.redis_url), settings) as c_default:
            assert await c_default.live_workers() == 0
    stranded = await asyncio.to_thread(
        subprocess.run,
        msgq_command("submit", "-", "--id", "stranded"),
        input=json.dumps(body("for nobody")),
        capture_output=True,
        text=True,
        env={"REDIS_URL": settings.redis_url, "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert stranded.returncode == 0, stranded.stderr
    assert "no worker has been seen" in stranded.stderr
    served = await asyncio.to_thread(
        subprocess.run,
        msgq_command("submit", "-", "--id", "served", "--wait", "--timeout", "30"),
        input=json.dumps(body("for other")),
        capture_output=True,
        text=True,
        env={"REDIS_URL": settings.redis_url, "PATH": "/usr/bin:/bin", "MSGQ_NAMESPACE": "other"},
        timeout=60,
        check=False,
    )
    assert served.returncode == 0, served.stderr
    assert "no worker" not in served.stderr
    assert json.loads(served.stdout)["status"] == "succeeded"
    status = await amsgq(settings, "status", "stranded")
    assert json.loads(status.stdout)["status"] == "queued"  # the default's job was left alone
    assert [p for p, _ in sent(sim)] == ["for other"]


async def test_raw_redis_producers_address_a_namespace_by_its_key_names(
    settings: Settings, redis: Redis, sim: Sim, start_worker: StartWorker
) -> None:
    """As docs/reference/raw-redis.md says: `msgq@eu:arq:job:<id>` plus `msgq@eu:queue` (or
    `msgq@eu:sched:inbox`) is a job of namespace eu, its record `msgq@eu:job:<id>`; a tenant's
    raw job is re-homed as `tenant:id` inside the namespace. The default names are not eu's."""
    eu = deployment(settings, "eu")
    now_ms = int(time.time() * 1000)
    for job_id, tenant, entry in (
        ("raw-plain", None, "msgq@eu:queue"),
        ("raw-acme", "acme", "msgq@eu:sched:inbox"),
        ("raw-default", None, "msgq:queue"),
    ):
        spec: dict[str, Any] = {"request": body(f"raw {job_id}")}
        if tenant:
            spec["tenant"] = tenant
        payload = {"t": 1, "f": "run_message", "a": [], "et": now_ms, "k": spec}
        prefix = "arq:job:" if entry == "msgq:queue" else "msgq@eu:arq:job:"
        await redis.set(prefix + job_id, json.dumps(payload))
        await redis.zadd(entry, {job_id: now_ms})
    await start_worker(eu)

    async def recorded() -> bool:  # a raw job's record is written when a worker takes it
        return await redis.exists("msgq@eu:job:raw-plain", "msgq@eu:job:acme:raw-acme") == 2

    await eventually(recorded, timeout_s=30)
    async with Client(connect(settings.redis_url), eu) as client:
        for job_id in ("raw-plain", "acme:raw-acme"):
            record = await client.wait(job_id, timeout=30)
            assert record.status is JobStatus.SUCCEEDED, record.error
    assert await redis.exists("msgq:job:raw-default", "msgq:job:raw-plain") == 0
    assert await redis.zscore("msgq:queue", "raw-default") is not None  # left for its own fleet
    assert sorted(p for p, _ in sent(sim)) == ["raw raw-acme", "raw raw-plain"]


async def _alive(client: Client) -> bool:
    return await client.live_workers() > 0


# ---------------------------------------------------------------- what one deployment sees


@pytest.fixture
async def two_deployments(settings: Settings) -> AsyncIterator[tuple[Settings, Settings]]:
    """Namespace `one` with a job and spend of tenant acme, `two` with globex's; no workers."""
    one, two = deployment(settings, "one"), deployment(settings, "two")
    async with connect(settings.redis_url) as redis:
        for s, tenant, job_id in ((one, "acme", "job-of-one"), (two, "globex", "job-of-two")):
            async with Client(connect(settings.redis_url), s) as c:
                await c.submit(body(f"{tenant}'s"), job_id=job_id, tenant=tenant)
            await Budgets(redis, s.keys).record(tenant, 1.25, HAIKU)
        yield one, two


async def test_listing_status_usage_and_audit_see_only_their_namespace(
    settings: Settings, redis: Redis, two_deployments: tuple[Settings, Settings]
) -> None:
    jobs = await amsgq(settings, "jobs", "--json", namespace="one")
    assert jobs.returncode == 0, jobs.stderr
    listed = [json.loads(line) for line in jobs.stdout.splitlines()]
    assert [(r["tenant"], r["id"]) for r in listed] == [("acme", "acme:job-of-one")]
    missing = await amsgq(settings, "status", "job-of-two", "--tenant", "globex", namespace="one")
    assert missing.returncode == 2 and "no job" in missing.stderr
    usage = await amsgq(settings, "usage", "--json", namespace="one")
    assert usage.returncode == 0, usage.stderr
    assert "acme" in usage.stdout and "globex" not in usage.stdout
    assert (await audit(redis, keyspace("one"))).records == 1
    assert (await audit(redis, KEYS)).records == 0  # the default deployment has none


async def test_the_dashboard_shows_only_its_namespace(
    api_settings: Settings, two_deployments: tuple[Settings, Settings]
) -> None:
    ui_settings = api_settings.model_copy(
        update={"admin_keys": SecretStr(ADMIN_KEY), "namespace": "one"}
    )
    app = create_app(ui_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://msgq.test") as ui:
            await sign_in(ui, ADMIN_KEY)
            for page in ("/ui", "/ui/jobs"):
                shown = (await ui.get(page)).text
                assert "acme" in shown, page
                assert "globex" not in shown and "job-of-two" not in shown, page


# ---------------------------------------------------------------- limits and budgets


async def test_rate_limit_buckets_pauses_and_budgets_are_per_namespace(redis: Redis) -> None:
    one, two = keyspace("one"), keyspace("two")
    limits = {"haiku": Limits(rpm=2)}
    first, second = RateLimiter(redis, one, limits), RateLimiter(redis, two, limits)
    now_ms = int(time.time() * 1000)
    for _ in range(2):
        assert (await first.acquire(HAIKU, input_tokens=1, output_tokens=1, now_ms=now_ms)).admitted
    assert not (await first.acquire(HAIKU, input_tokens=1, output_tokens=1, now_ms=now_ms)).admitted
    assert (await second.acquire(HAIKU, input_tokens=1, output_tokens=1, now_ms=now_ms)).admitted
    await first.pause("one's spend limit", None)
    assert await second.paused() is None

    config = parse_tenants("[tenants.acme]\nbudget_usd_day = 1.0\n").get("acme")
    assert isinstance(await Budgets(redis, one).reserve("acme", config, 0.9), Reservation)
    assert not isinstance(await Budgets(redis, one).reserve("acme", config, 0.9), Reservation)
    assert isinstance(await Budgets(redis, two).reserve("acme", config, 0.9), Reservation)
    assert await Budgets(redis, KEYS).tenants() == []


def test_on_a_cluster_the_tenants_spend_spreads_over_sixteen_tags() -> None:
    """Every budget step of a tenant is one slot, and the tenants spread over 16 spend tags
    (not one each: a slot costs every process a pool) on other slots than the deployment's."""
    import zlib

    from redis.crc import key_slot

    keys = keyspace(clustered=True, partitions=16)
    tag = zlib.crc32(b"acme") % 16
    assert keys.spend_key("acme", "d20261207") == "{msgq/t" + str(tag) + "}:spend:acme:d20261207"
    same = [
        keys.spend_key("acme", "d20261207"),
        keys.spend_key("acme", "m202612"),
        keys.spend_models_key("acme", "d20261207"),
        keys.spend_applied_key("acme", "n1"),
    ]
    assert len({key_slot(key.encode()) for key in same}) == 1
    tenants = {key_slot(keys.spend_key(f"tenant-{n}", "m").encode()) for n in range(200)}
    assert len(tenants) == 16 and key_slot(keys.spend_tenants.encode()) not in tenants
    two = keyspace("two", clustered=True)
    assert two.spend_key("acme", "m202612") == "{msgq@two/t" + str(tag) + "}:spend:acme:m202612"
