"""The reconciler, `msgq audit`, batch retention/expiry/atomic creation, and the body limit."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from msgq.audit import audit
from msgq.batches import BatchMeta
from msgq.client import Client
from msgq.connections import connect
from msgq.dev.embedded_redis import free_port
from msgq.dev.stack import msgq_command, wait_http
from msgq.jobs.store import JobStore
from msgq.settings import Settings
from schemas import JobStatus
from tests.conftest import KEY_A, KEYS, SAMPLES, Sim, StartWorker, eventually, stop_process
from worker.fleet_lock import FleetLock
from worker.reconciler import Reconciler

BODY = json.loads((SAMPLES / "requests" / "text.json").read_text())


def spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    return subprocess.Popen(command, env=env, stdout=out, stderr=out)


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": settings.redis_url}
    env["MSGQ_PARTITIONS"] = str(settings.partitions)
    return subprocess.run(
        msgq_command(*args), env=env, capture_output=True, text=True, timeout=60, check=False
    )


async def test_lost_payload_is_found_by_audit_and_ended_truthfully(
    settings: Settings, client: Client, redis: Redis, store: JobStore
) -> None:
    """A queued job whose payload vanished: audit exits 1 naming it; the reconciler (two passes,
    under its lock) ends it `failed`/`lost`; audit is clean again."""
    await redis.flushall()
    job = await client.submit(BODY)
    await redis.delete(KEYS.arq_job_key(job.id))  # what a lost write or an operator's DEL does
    found = cli(settings, "audit")
    assert found.returncode == 1 and job.id in found.stdout, found.stdout + found.stderr
    reconciler = Reconciler(redis, store, settings)
    assert await reconciler.take_lock()
    first = await reconciler.run_once()
    assert first.lost == []  # a suspect must look the same on two passes
    second = await reconciler.run_once()
    assert second.lost == [job.id]
    record = await client.get(job.id)
    assert record.status is JobStatus.FAILED and record.error and record.error.type == "lost"
    assert (await audit(redis, KEYS)).clean
    assert cli(settings, "audit").returncode == 0


async def test_reconciler_lock_lets_one_worker_run_it(
    settings: Settings, redis: Redis, store: JobStore
) -> None:
    await redis.flushall()
    one, two = Reconciler(redis, store, settings), Reconciler(redis, store, settings)
    assert await one.take_lock() and not await two.take_lock()
    assert await one.take_lock()  # the holder renews


async def test_a_lease_held_moments_ago_is_not_asked_for_again(redis: Redis) -> None:
    """The dispatcher asks for its lease before every tick: within `renew_after_s` of a renewal
    the answer comes without Redis (the lease's TTL is not touched); past it, it renews."""
    await redis.flushall()
    key = KEYS.dispatcher_lock
    lock, other = FleetLock(redis, key), FleetLock(redis, key)
    assert await lock.hold(10_000, renew_after_s=60.0)
    await redis.pexpire(key, 5_000)
    assert await lock.hold(10_000, renew_after_s=60.0)
    assert 0 < await redis.pttl(key) <= 5_000  # not asked: not renewed
    assert not await other.hold(10_000, renew_after_s=60.0)  # a refusal is never remembered
    assert await lock.hold(10_000)  # renew_after_s 0: asks, and renews
    assert await redis.pttl(key) > 5_000
    await lock.release()
    assert await other.hold(10_000) and not await lock.hold(10_000, renew_after_s=60.0)


async def test_payload_missing_from_the_queue_is_requeued_and_runs(
    settings: Settings, client: Client, redis: Redis, store: JobStore, start_worker: StartWorker
) -> None:
    await redis.flushall()
    fifo = settings.model_copy(update={"scheduler": False})  # straight into arq's queue
    async with Client(connect(settings.redis_url), fifo) as plain:
        job = await plain.submit(BODY)
    await redis.zrem(
        settings.keys.for_job(job.id).queue, job.id
    )  # the payload is there, the queue entry not
    reconciler = Reconciler(redis, store, settings)
    await reconciler.run_once()
    assert (await reconciler.run_once()).requeued == [job.id]
    await start_worker()
    assert (await client.wait(job.id, timeout=15)).status is JobStatus.SUCCEEDED


async def test_a_waiting_job_in_an_unlisted_scheduler_queue_is_found_and_listed_again(
    settings: Settings, client: Client, redis: Redis, store: JobStore
) -> None:
    """The dispatcher reads only the scheduler queues the backlog lists: a job waiting in an
    unlisted one is never admitted (a race in the dispatcher's pruning once did this). Audit
    names it; one reconciler pass lists the queue again, and audit is clean."""
    await redis.flushall()
    job = await client.submit(BODY)
    queue = await redis.hget(KEYS.sched_where, job.id)  # type: ignore[misc]
    assert queue is not None  # waiting in the scheduler
    await redis.srem(KEYS.sched_backlog, queue)  # type: ignore[misc]
    found = (await audit(redis, KEYS)).findings
    assert found["waiting in a scheduler queue no dispatcher reads"].examples == [job.id]
    done = await Reconciler(redis, store, settings).run_once()
    assert done.relisted == [job.id]
    assert await redis.sismember(KEYS.sched_backlog, queue)  # type: ignore[misc]
    assert (await audit(redis, KEYS)).clean
    assert (await Reconciler(redis, store, settings).run_once()).relisted == []


async def test_batch_past_expiry_ends_with_the_rest_expired_and_keys_have_ttls(
    settings: Settings,
    api: httpx.AsyncClient,
    redis: Redis,
    store: JobStore,
    start_worker: StartWorker,
    sim: Sim,
) -> None:
    """As the API's: at expires_at the batch ends, requests not done are `expired`. Finished
    requests keep the batch's 29-day retention, and every batch key has a TTL."""
    await redis.flushall()
    requests = [{"custom_id": f"r{i}", "params": BODY} for i in range(3)]
    created = (await api.post("/v1/messages/batches", json={"requests": requests})).json()
    batch_id = created["id"]
    raw = await redis.get(KEYS.batch_key(batch_id))
    meta = BatchMeta.model_validate_json(raw or b"")
    past = datetime.now(UTC) - timedelta(seconds=1)
    await redis.set(
        KEYS.batch_key(batch_id),
        meta.model_copy(update={"expires_at": past}).model_dump_json(),
        keepttl=True,
    )
    await redis.zadd(KEYS.batches_key, {batch_id: int(past.timestamp() * 1000)})
    done = await Reconciler(redis, store, settings).run_once()
    assert done.expired_batches == [batch_id] and done.expired_jobs == 3
    view = (await api.get(f"/v1/messages/batches/{batch_id}")).json()
    assert view["processing_status"] == "ended"
    assert view["request_counts"]["expired"] == 3
    lines = (await api.get(f"/v1/messages/batches/{batch_id}/results")).text.splitlines()
    assert [json.loads(line)["result"]["type"] for line in lines] == ["expired"] * 3
    ttl = await redis.ttl(KEYS.record_key(f"tenant-a:{batch_id}:r0"))
    assert ttl > settings.retention_s  # the batch's retention, not a single job's
    assert (await audit(redis, KEYS)).clean
    assert sim.received == 0


async def test_batch_creation_is_all_or_nothing_under_sigkill(
    api_settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    """SIGKILL the API mid-write of a 20,000-request batch: nothing of it is left in Redis.

    The kill has to land inside the write, which is one transaction that commits in
    milliseconds: the moment Redis shows it open (CLIENT LIST: `multi=`, the commands queued so
    far, fewer than the batch needs) or shows anything written (a writer that is not atomic),
    writes are paused (CLIENT PAUSE WRITE: nothing can commit), the API is SIGKILLed, writes
    resume. Chunked or unguarded writes would leave part of the batch here; the old version of
    this test killed only once something appeared, i.e. after the whole batch was written.
    The fleet's two batch indexes are written first, in a step of their own (on a cluster the
    batch's partition is another slot): they may be left, naming nothing, and the audit is
    clean with them."""
    await redis.flushall()
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "REDIS_URL": api_settings.redis_url,
        "MSGQ_API_KEYS": f"tenant-a:{KEY_A}",
    }
    api = spawn(msgq_command("api", "--port", str(port)), env, tmp_path / "api.log")
    seen: list[int] = []
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        before = await redis.dbsize()
        body = {"requests": [{"custom_id": f"r{i}", "params": BODY} for i in range(20_000)]}

        def post() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the server dies mid-request
                httpx.post(
                    f"http://127.0.0.1:{port}/v1/messages/batches",
                    json=body,
                    headers={"x-api-key": KEY_A, "anthropic-version": "2023-06-01"},
                    timeout=60,
                )

        posting = threading.Thread(target=post, daemon=True)
        posting.start()

        async def mid_write() -> bool:
            queued = [int(c.get("multi", -1)) for c in await redis.client_list()]
            written = await redis.dbsize() > before + 2  # more than the two indexes
            if max(queued) > 0 or written:
                await redis.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")
                seen.extend([max(queued), int(written)])
                return True
            return False

        await eventually(mid_write, timeout_s=30)
        api.send_signal(signal.SIGKILL)
        api.wait(timeout=10)
    finally:
        await redis.execute_command("CLIENT", "UNPAUSE")
        stop_process(api)
    print(f"killed with {seen[0]} commands of the transaction queued")
    metas = [k async for k in redis.scan_iter(match=KEYS.prefix + "batch:*")]
    jobs = [
        k
        for part in KEYS.parts
        async for k in redis.scan_iter(match=part.record_key("*"), count=5000)
    ]
    assert (len(metas), len(jobs)) == (0, 0)
    assert await redis.dbsize() - before in (0, 2)  # at most the indexes, naming nothing
    assert 0 < seen[0] < 20_000 * 4  # inside the write: each job takes more commands than 4
    assert (await audit(redis, KEYS)).clean


async def test_chunked_body_over_the_limit_is_413_in_the_api_shape(
    api_settings: Settings,
) -> None:
    """No Content-Length (chunked): still 413 request_too_large, not a body-parsing 400."""
    from msgq.http.app import create_app

    small = api_settings.model_copy(update={"max_body_bytes": 1000})
    app = create_app(small)

    async def chunks() -> Any:
        for _ in range(20):
            yield b" " * 200

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            answer = await http.post(
                "/v1/jobs",
                content=chunks(),
                headers={
                    "x-api-key": KEY_A,
                    "anthropic-version": "2023-06-01",
                    "content-type": "application/json",
                },
            )
    assert answer.status_code == 413
    assert answer.json()["error"]["type"] == "request_too_large"
