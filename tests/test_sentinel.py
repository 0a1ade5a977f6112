"""High availability: msgq on a Sentinel-managed Redis (a primary, a replica, three Sentinels,
all real servers from the bundled binary), through a SIGKILL of the primary.

`MSGQ_CHAOS=1` runs the failover with 1,000 jobs instead of 300.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq.connections import create_pool
from pydantic import SecretStr, ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from msgq.arq_format import redis_settings
from msgq.audit import audit
from msgq.client import Client
from msgq.connections import SentinelTarget, connect, parse_sentinel_url
from msgq.dev.embedded_redis import EmbeddedRedis
from msgq.dev.sentinel_cluster import SentinelCluster
from msgq.dev.stack import msgq_command
from msgq.errors import NotReplicatedError
from msgq.keys import Keyspace
from msgq.settings import Settings
from schemas import JobStatus
from tests.conftest import KEYS, Sim, StartWorker, eventually, stop_workers, worker_env
from worker.services import SERVICES

CHAOS = os.environ.get("MSGQ_CHAOS") == "1"
PASSWORD = "s3cret-ha"
BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 20,
    "messages": [{"role": "user", "content": "survive the failover"}],
}
SAMPLES = Path(__file__).parent.parent / "samples"


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    """A healthy cluster for the tests that leave it healthy (no failover)."""
    with SentinelCluster(tmp_path_factory.mktemp("ha"), password=PASSWORD) as cluster:
        yield cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    """A cluster of its own, for a test that kills its primary."""
    with SentinelCluster(tmp_path / "ha", password=PASSWORD) as c:
        yield c


@pytest.fixture
def ha_settings(settings: Settings, shared_cluster: SentinelCluster) -> Settings:
    return settings.model_copy(update={"redis_url": shared_cluster.url})


@pytest.fixture
async def ha_redis(ha_settings: Settings) -> AsyncIterator[Redis]:
    async with connect(ha_settings) as redis:
        await redis.flushdb()
        yield redis


def test_sentinel_urls_parse_and_bad_ones_are_refused() -> None:
    """Hosts (default port 26379), service, db, password and TLS come from the URL; a malformed
    one is refused at start-up with a line that says what is wrong."""
    assert parse_sentinel_url("redis+sentinel://:pw@h1:26380,h2/mymaster/2") == SentinelTarget(
        sentinels=(("h1", 26380), ("h2", 26379)), service="mymaster", db=2, password="pw"
    )
    assert parse_sentinel_url("rediss+sentinel://u:p%40ss@[::1]:5000/svc") == SentinelTarget(
        sentinels=(("::1", 5000),), service="svc", username="u", password="p@ss", ssl=True
    )
    url = "redis+sentinel://h1:26379,h2:26379/mymaster/0"
    assert Settings(_env_file=None, redis_url=url).redis_url == url
    for bad in ("redis+sentinel:///mymaster", "redis+sentinel://h1", "redis+sentinel://h:x/m"):
        with pytest.raises(ValidationError, match="Sentinel"):
            Settings(_env_file=None, redis_url=bad)


async def test_every_entry_point_works_through_sentinel(
    ha_settings: Settings, ha_redis: Redis, start_worker: StartWorker, tmp_path: Path
) -> None:
    """REDIS_URL=redis+sentinel://:password@... reaches the primary from the client, a worker,
    arq's own RedisSettings, the HTTP API, the CLI and captioning."""
    await start_worker(ha_settings)
    async with Client.from_url(ha_settings.redis_url, ha_settings) as client:
        job = await client.submit(BODY)
        assert (await client.wait(job.id, timeout=20)).status is JobStatus.SUCCEEDED

    pool = await create_pool(redis_settings(ha_settings.redis_url))
    try:
        assert await pool.get(KEYS.record_key(job.id)) is not None  # arq's Sentinel settings work
    finally:
        await pool.aclose()

    from msgq.http.app import create_app

    api_settings = ha_settings.model_copy(update={"api_keys": SecretStr("t:key-0123456789")})
    app = create_app(api_settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://msgq.test",
            headers={"x-api-key": "key-0123456789", "anthropic-version": "2023-06-01"},
        ) as http,
    ):
        created = await http.post("/v1/jobs", json={"request": BODY})
        assert created.status_code == 202, created.text

        async def answered() -> bool:
            got = await http.get(f"/v1/jobs/{created.json()['id']}")
            return bool(got.json()["status"] == "succeeded")

        await eventually(answered, timeout_s=20)

    env = {**os.environ, "REDIS_URL": ha_settings.redis_url}
    out = tmp_path / "captions.jsonl"
    caption = msgq_command("caption", str(SAMPLES / "images"), "--out", str(out))
    for args in (caption, msgq_command("status", job.id), msgq_command("audit")):
        try:
            done = await asyncio.to_thread(
                subprocess.run, args, env=env, capture_output=True, timeout=60
            )
        except subprocess.TimeoutExpired:
            await _show_stuck(ha_redis)
            raise
        assert done.returncode == 0, (args, done.stderr)
    assert len(out.read_bytes().splitlines()) == 3  # the three sample images, captioned


async def test_submit_waits_for_a_replica(
    ha_settings: Settings, ha_redis: Redis, shared_cluster: SentinelCluster
) -> None:
    """MSGQ_SUBMIT_MIN_REPLICAS=1: with the replica frozen, submit raises after the timeout,
    saying the job may exist; once it is back, the same ID resubmits cleanly. The HTTP API
    answers 503 with the same message."""
    durable = ha_settings.model_copy(
        update={"submit_min_replicas": 1, "submit_replica_timeout_ms": 300}
    )
    replica = shared_cluster.processes[shared_cluster.replica_port]
    async with Client(connect(durable), durable) as client:
        assert (await client.submit(BODY, job_id="first")).created
        os.kill(replica.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(NotReplicatedError, match="same job ID is safe") as raised:
                await client.submit(BODY, job_id="frozen")
            assert 0.3 <= time.monotonic() - started < 5
            assert (raised.value.replicas, raised.value.wanted) == (0, 1)
            assert await ha_redis.exists(KEYS.record_key("frozen"))  # stored on the primary
            answer = await _post_job(durable, "frozen-http")
            assert answer.status_code == 503
            assert "same job ID is safe" in answer.json()["error"]["message"]
        finally:
            os.kill(replica.pid, signal.SIGCONT)
        again = await client.submit(BODY, job_id="frozen")
        assert not again.created  # idempotent: the first attempt's job, now replicated


async def test_a_sentinel_clients_pool_is_bounded_and_waits(
    ha_settings: Settings, ha_redis: Redis
) -> None:
    """Bound 3 through Sentinel: 12 commands at once that each hold a connection for 0.2 s
    (BLPOP on an empty list) all complete, waiting their turn (redis-py's own Sentinel pool
    raises "Too many connections" instead); the primary sees 3 connections of that client."""
    bounded = ha_settings.model_copy(update={"redis_max_connections": 3})
    async with connect(bounded, client_name="bounded-pool") as redis:
        held = [redis.blpop(["nothing-here"], timeout=0.2) for _ in range(12)]
        assert await asyncio.gather(*held) == [None] * 12  # type: ignore[misc]
        clients = await ha_redis.client_list()
    assert sum(1 for c in clients if c.get("name") == "bounded-pool") == 3


async def _post_job(settings: Settings, job_id: str) -> httpx.Response:
    from msgq.http.app import create_app

    app = create_app(settings.model_copy(update={"api_keys": SecretStr("t:key-0123456789")}))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://msgq.test",
            headers={"x-api-key": "key-0123456789", "anthropic-version": "2023-06-01"},
        ) as http,
    ):
        return await http.post("/v1/jobs", json={"request": BODY, "id": job_id})


async def test_the_loss_window_without_min_replicas(
    cluster: SentinelCluster, settings: Settings
) -> None:
    """What MSGQ_SUBMIT_MIN_REPLICAS closes: with the replica's link down, a plain submit is
    acknowledged and then lost with the primary; a durable one is refused instead."""
    plain = settings.model_copy(update={"redis_url": cluster.url})
    durable = plain.model_copy(update={"submit_min_replicas": 1, "submit_replica_timeout_ms": 200})
    old_port = cluster.primary_port
    primary = Redis(port=old_port, password=PASSWORD)
    replica = Redis(port=cluster.replica_port, password=PASSWORD)
    async with (
        primary,
        replica,
        Client(connect(plain), plain) as client,
        Client(connect(durable), durable) as durable_client,
        connect(plain) as redis,
    ):
        replicated = await durable_client.submit(BODY, job_id="replicated")
        # Cut the link and keep it cut (a wrong password on reconnect): the replica falls behind.
        await replica.config_set("masterauth", "wrong")
        await primary.client_kill_filter(_type="slave")

        async def link_down() -> bool:
            return bool((await primary.info("replication"))["connected_slaves"] == 0)

        await eventually(link_down)
        with pytest.raises(NotReplicatedError):
            await durable_client.submit(BODY, job_id="refused")  # never acknowledged
        acknowledged = await client.submit(BODY, job_id="acknowledged")
        assert acknowledged.created
        await asyncio.to_thread(cluster.kill, old_port)
        await replica.config_set("masterauth", PASSWORD)
        await asyncio.to_thread(cluster.wait_for_primary, other_than=old_port)
        ids = [replicated.id, "refused", "acknowledged"]
        assert [await redis.exists(KEYS.record_key(i)) for i in ids] == [1, 0, 0]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A server of the test's own, stopped after the workers that use it."""
    server = EmbeddedRedis(tmp_path / "redis", appendonly=False)
    server.start()
    yield server
    server.stop()


async def test_a_redis_failure_mid_pickup_gives_the_worker_slot_back(
    own_redis: EmbeddedRedis, settings: Settings, start_worker: StartWorker
) -> None:
    """Redis failing while arq starts a job (as a failover did, about once a run) costs the
    worker no slot; arq alone keeps one taken for good each time, until it takes no jobs."""
    worker = await start_worker(settings.model_copy(update={"redis_url": own_redis.url}))

    async def started() -> bool:
        return SERVICES in worker.ctx

    await eventually(started)
    free = worker.sem._value
    await asyncio.to_thread(own_redis.stop)
    try:
        with pytest.raises((RedisError, OSError)):
            await worker.start_jobs([b"picked-as-redis-fails"])
    finally:
        await asyncio.to_thread(own_redis.start)  # so the worker closes cleanly at teardown
    assert worker.job_counter == 0
    assert worker.sem._value == free  # every slot free again


# ------------------------------------------------------------------ the failover run


class Producer:
    """Submits jobs `ha-0000`, `ha-0001`, ... one after another; a submit that fails (Redis
    gone past the bound, or too few replicas) is sent again with the same ID."""

    def __init__(self, client: Client, n: int) -> None:
        self.client, self.n = client, n
        self.acked: list[tuple[str, float, float]] = []  # (job ID, first sent, acknowledged)
        self.failures: Counter[str] = Counter()

    async def run(self) -> None:
        for i in range(self.n):
            job_id, sent_at = f"ha-{i:04}", time.time()
            while True:
                try:
                    await self.client.submit(BODY, job_id=job_id)
                except (NotReplicatedError, RedisError) as exc:
                    self.failures[type(exc).__name__] += 1
                    await asyncio.sleep(0.05)  # a producer's backoff, not a sync point
                    continue
                self.acked.append((job_id, sent_at, time.time()))
                break


async def producing_a_third(
    client: Client, n: int, logs: list[Path]
) -> tuple[Producer, asyncio.Task[None]]:
    """Once every worker logged its start, submit `n` jobs; return when a third are
    acknowledged (the moment a failover run kills its primary), the producer still going."""

    async def all_started() -> bool:
        return all(b"worker.started" in log.read_bytes() for log in logs)

    await eventually(all_started, timeout_s=30)  # the kill must find them running
    producer = Producer(client, n)
    producing = asyncio.create_task(producer.run())

    async def a_third_acknowledged() -> bool:
        return len(producer.acked) >= n // 3

    await eventually(a_third_acknowledged, timeout_s=30)
    return producer, producing


async def refused_for_want_of_a_replica(producer: Producer) -> None:
    """Until a durable submit has been refused (no replica), seen rather than left to timing."""

    async def refused() -> bool:
        return producer.failures["NotReplicatedError"] > 0

    await eventually(refused, timeout_s=30)


async def all_ended(redis: Redis, ids: list[str], keys: Keyspace = KEYS) -> Counter[str]:
    """Wait for every acknowledged job to end (or be missing); their statuses. What a job that
    never ended holds is printed for the failure report."""

    async def ended() -> bool:
        return set(await _statuses(redis, ids, keys)) <= {"succeeded", "missing"}

    try:
        await eventually(ended, timeout_s=60)
    except BaseException:
        await _show_stuck(redis, ids, keys)
        raise
    return await _statuses(redis, ids, keys)


async def _statuses(redis: Redis, ids: list[str], keys: Keyspace = KEYS) -> Counter[str]:
    raws = await redis.mget([keys.record_key(i) for i in ids])
    return Counter(json.loads(r)["status"] if r else "missing" for r in raws)


def _spawn(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = worker_env(settings, MSGQ_SHUTDOWN_GRACE_S="10", MSGQ_REDIS_FAILOVER_WAIT_S="20")
    with log.open("ab") as out:
        return subprocess.Popen(msgq_command("worker"), env=env, stdout=out, stderr=out)


async def _show_stuck(redis: Redis, ids: list[str] | None = None, keys: Keyspace = KEYS) -> None:
    """Print what a job that never ended holds in Redis, for the failure report."""
    if ids is None:
        prefix = keys.record_key("")
        ids = [k.decode()[len(prefix) :] async for k in redis.scan_iter(match=prefix + "*")]
    for job_id in ids:
        raw = await redis.get(keys.record_key(job_id))
        if raw is not None and json.loads(raw)["status"] not in ("succeeded", "missing"):
            found = sorted(k.decode() for k in await redis.keys(f"*{job_id}*"))
            print(f"stuck {job_id}: {raw.decode()[:300]} keys={found}")


def _events(*logs: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for log in logs
        for line in log.read_text(errors="replace").splitlines()
        if line.startswith("{")
    ]


@pytest.mark.parametrize("min_replicas", [1, 0])
async def test_primary_sigkill_mid_run(
    min_replicas: int, cluster: SentinelCluster, settings: Settings, sim: Sim, tmp_path: Path
) -> None:
    """SIGKILL the primary while jobs are being submitted and run: Sentinel promotes the
    replica, both workers and the producer resume on it within a bound, every job ends and
    the audit is clean. With MSGQ_SUBMIT_MIN_REPLICAS=1 no acknowledged job is lost (and
    submits refuse to acknowledge while no replica exists); without it, losses are reported."""
    n = 1000 if CHAOS else 300
    custom = settings.model_copy(
        update={
            "redis_url": cluster.url,
            "submit_min_replicas": min_replicas,
            "redis_failover_wait_s": 20.0,
            # Longer than the failover (~2.5 s), as the default 15 s is longer than a production
            # one: a running job's lock must outlast it, or another worker runs the job again.
            "lock_s": 5.0,
        }
    )
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    workers = [_spawn(custom, log) for log in logs]
    old_port = cluster.primary_port
    try:
        async with Client(connect(custom), custom) as client, connect(custom) as redis:
            producer, producing = await producing_a_third(client, n, logs)
            killed_at = time.time()
            await asyncio.to_thread(cluster.kill, old_port)
            await asyncio.to_thread(cluster.wait_for_primary, other_than=old_port)
            promoted_s = time.time() - killed_at
            if min_replicas:
                # No replica until the lost node comes back: durable submits are refused (seen
                # before it does), then it rejoins, empty, as a replica.
                await refused_for_want_of_a_replica(producer)
                await asyncio.to_thread(cluster.rejoin, old_port)
            await asyncio.wait_for(producing, timeout=60)
            final = await all_ended(redis, [job_id for job_id, _, _ in producer.acked])
            report = await audit(redis, KEYS)
        assert all(w.poll() is None for w in workers)  # they rode it out
    finally:
        codes = await asyncio.to_thread(stop_workers, *workers)
    assert codes == [0, 0]
    assert report.clean, report.findings

    failovers = [e for e in _events(*logs) if e.get("event") == "redis.failover"]
    assert all(any(e.get("event") == "redis.failover" for e in _events(log)) for log in logs)
    resumed_s = [datetime.fromisoformat(e["timestamp"]).timestamp() - killed_at for e in failovers]
    # The first job sent after the kill, acknowledged: with min replicas, once a replica is back.
    first_ack_s = min(acked for _, sent, acked in producer.acked if sent > killed_at) - killed_at
    duplicates = sim.received - n  # calls made again for a job already called
    print(
        f"\nfailover, min replicas {min_replicas}: {n} jobs; primary SIGKILLed after "
        f"{n // 3} acknowledged; Sentinel promoted the replica in {promoted_s:.1f}s; workers "
        f"resumed in {', '.join(f'{s:.1f}s' for s in sorted(resumed_s))}; the first job sent "
        f"after the kill acknowledged at {first_ack_s:.1f}s; producer retries "
        f"{dict(producer.failures)}; acknowledged jobs lost: {final['missing']}; duplicated "
        f"upstream calls: {duplicates}"
    )
    assert 0 <= duplicates <= 2 * custom.max_jobs  # at most the calls in flight at the kill
    assert all(e["old_primary"] == f"127.0.0.1:{old_port}" for e in failovers)
    assert max(resumed_s) < 15  # the bound: ~1 s detection + election + promotion
    if min_replicas:
        assert final == Counter({"succeeded": n})  # no acknowledged job lost
        assert producer.failures["NotReplicatedError"] > 0  # while the primary had no replica
    else:
        assert final["succeeded"] + final["missing"] == n
