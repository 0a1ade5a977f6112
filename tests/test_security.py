"""Security: no pickle execution, Redis passwords, the key absent from a Redis dump."""

from __future__ import annotations

import asyncio
import os
import pickle
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from msgq.client import Client
from msgq.connections import connect
from msgq.dev.embedded_redis import EmbeddedRedis
from msgq.jobs.store import JobStore
from msgq.settings import Settings
from schemas import JobStatus
from tests.conftest import KEYS, TEST_API_KEY, Sim, StartWorker, eventually

BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 20,
    "messages": [{"role": "user", "content": "secure me"}],
}


class Exploit:
    """Unpickling this would create a file: proof of code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


async def test_pickled_payload_is_refused_not_executed(
    redis: Redis,
    store: JobStore,
    tmp_path: Path,
    settings: Settings,
    client: Client,
    sim: Sim,
    start_worker: StartWorker,
) -> None:
    """A pickle that would run a command is stored as a failed job; the command never runs."""
    marker = tmp_path / "pwned"
    await redis.set(KEYS.arq_job_key("evil"), pickle.dumps(Exploit(marker)))
    await redis.zadd(settings.keys.for_job("evil").queue, {"evil": time.time() * 1000})
    await start_worker()

    async def recorded() -> bool:
        return await store.get("evil") is not None

    await eventually(recorded)
    record = await client.wait("evil", timeout=20)
    assert record.status is JobStatus.FAILED and record.error is not None
    assert "not valid JSON" in record.error.message
    assert not marker.exists() and sim.received == 0


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """Requested before start_worker, so it outlives the workers using it."""
    server = EmbeddedRedis(tmp_path / "r", appendonly=False, password="s3cret-redis-pass")
    server.start()
    yield server
    server.stop()


async def test_password_protected_redis_works_from_redis_url(
    password_redis: EmbeddedRedis, settings: Settings, sim: Sim, start_worker: StartWorker
) -> None:
    """REDIS_URL with a password: producer and worker both work; without it, refused."""
    from redis.exceptions import AuthenticationError, ResponseError

    secured = settings.model_copy(update={"redis_url": password_redis.url})
    await start_worker(secured)
    async with Client(connect(password_redis.url), secured) as client:
        job = await client.submit(BODY)
        assert (await client.wait(job.id, timeout=20)).status is JobStatus.SUCCEEDED
    anonymous = password_redis.url.replace(":s3cret-redis-pass@", "")
    async with Client(connect(anonymous), secured) as client:
        with pytest.raises((AuthenticationError, ResponseError)):
            await client.submit(BODY)


async def test_api_key_absent_from_a_redis_save_and_worker_metrics(
    redis: Redis, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """SAVE the keyspace to disk after jobs ran: the key is not in the file, nor in metrics."""
    from prometheus_client import REGISTRY, generate_latest

    sim.script({"status": 529}, {"status": 200}, {"status": 403, "message": "nope"})
    await start_worker()
    for _ in range(2):
        await client.wait((await client.submit(BODY)).id, timeout=20)
    await redis.save()
    directory = (await redis.config_get("dir"))["dir"]
    dump = Path(directory, (await redis.config_get("dbfilename"))["dbfilename"])
    saved = await asyncio.to_thread(dump.read_bytes)
    assert len(saved) > 0 and b"msgq:job:" in saved
    assert TEST_API_KEY.encode() not in saved
    assert TEST_API_KEY not in generate_latest(REGISTRY).decode()
