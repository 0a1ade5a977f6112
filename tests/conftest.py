"""Fixtures: a real Redis (bundled binary, random port), the simulator over HTTP, workers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis as redis_sync
from pydantic import SecretStr
from redis.asyncio import Redis

from msgq.cancel import cancel_and_wait
from msgq.client import Client
from msgq.cluster import is_cluster_url, parse_cluster_url
from msgq.connections import connect
from msgq.dev.embedded_redis import EmbeddedRedis, free_port
from msgq.dev.redis_cluster import RedisCluster
from msgq.dev.stack import msgq_command, wait_http
from msgq.jobs.store import JobStore
from msgq.keys import Keyspace, keyspace
from msgq.settings import Settings
from worker.main import MsgqWorker, build_worker

TEST_API_KEY = "sk-ant-test-0123456789abcdefSECRET"
# `make test-cluster` runs the core suite on a real 3-master Redis Cluster (TEST_REDIS_CLUSTER=1):
# the fixtures start one and name it `redis+cluster://`, whose keys all carry the hash tag.
ON_CLUSTER = os.environ.get("TEST_REDIS_CLUSTER") == "1"
# `make test-partitions` runs the core suite with the deployment split into partitions.
PARTITIONS = int(os.environ.get("TEST_PARTITIONS", "1"))
KEYS: Keyspace = keyspace(clustered=ON_CLUSTER, partitions=PARTITIONS)  # as the settings use


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting leaks in from the developer's shell (httpx's habit)."""
    for name in list(os.environ):
        if name.startswith(("MSGQ_", "ANTHROPIC_")) or name == "REDIS_URL":
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The bundled server on a random port; REDIS_URL instead, if set (its DB is flushed!)."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    if ON_CLUSTER:
        # TEST_CLUSTER_MASTERS=1: one master holding every slot, so a step that crosses slots
        # fails with CROSSSLOT whatever the routing (how the partitions' steps were found).
        masters = int(os.environ.get("TEST_CLUSTER_MASTERS", "3"))
        with RedisCluster(tmp_path_factory.mktemp("cluster"), masters=masters) as cluster:
            yield cluster.url
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    flush(redis_server)
    return redis_server


def flush(url: str) -> None:
    """Empty the test database: every master of a cluster (the seeds a test cluster names)."""
    if not is_cluster_url(url):
        with redis_sync.Redis.from_url(url) as client:
            client.flushdb()
        return
    for host, port in parse_cluster_url(url).seeds:
        with redis_sync.Redis(host=host, port=port) as node:
            node.flushall()


class Sim:
    """Steers and inspects the simulator through its /_sim routes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10)

    def reset(self) -> None:
        self.http.post("/_sim/reset").raise_for_status()

    def script(self, *responses: dict[str, Any], key: str | None = None) -> None:
        self.http.post(
            "/_sim/script", json={"responses": list(responses), "key": key}
        ).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return dict(self.http.get("/_sim/stats").json())

    def requests(self, limit: int = 1000) -> list[dict[str, Any]]:
        return list(self.http.get("/_sim/requests", params={"limit": limit}).json()["requests"])

    @property
    def received(self) -> int:
        return int(self.stats()["received"])


def stop_process(process: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL if it lingers: a test run never leaves a server behind."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_workers(*processes: subprocess.Popen[Any], timeout_s: float = 30) -> list[int | None]:
    """SIGTERM all, wait; any still running after `timeout_s` is SIGKILLed (never leaked into
    later tests, where it could take their jobs) and reported as None."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    codes: list[int | None] = []
    for process in processes:
        try:
            codes.append(process.wait(timeout=timeout_s))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            codes.append(None)
    return codes


SimProcess = tuple[str, "subprocess.Popen[bytes]", Path]


@pytest.fixture(scope="session")
def simulator_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    port = free_port()
    log = tmp_path_factory.mktemp("simulator") / "simulator.log"
    with log.open("wb") as out:
        process = subprocess.Popen(msgq_command("simulator", "--port", str(port)), stderr=out)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/_sim/stats", process=process)
    yield url, process, log
    stop_process(process)


@pytest.fixture(scope="session")
def simulator_server(simulator_process: SimProcess) -> str:
    return simulator_process[0]


@pytest.fixture
def sim(simulator_process: SimProcess) -> Iterator[Sim]:
    url, process, log = simulator_process
    if process.poll() is not None:  # its port may now belong to another server: stop here
        pytest.fail(f"the session simulator exited ({process.returncode}); see {log}")
    s = Sim(url)
    s.reset()
    yield s
    s.http.close()


@pytest.fixture
def settings(redis_url: str, simulator_server: str) -> Settings:
    """Fast backoff and a short lock, so retry and crash tests take seconds."""
    return Settings(
        _env_file=None,
        redis_url=redis_url,
        anthropic_api_key=TEST_API_KEY,
        anthropic_base_url=simulator_server,
        backoff_base_s=0.05,
        backoff_max_s=0.2,
        request_timeout_s=5.0,
        lock_s=2.0,
        poll_delay_s=0.01,
        shutdown_grace_s=5,
        pause_recheck_s=0.2,
        partitions=PARTITIONS,
    )


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    async with Client(connect(settings.redis_url), settings) as c:
        yield c


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    """A plain connection, for what a test checks in Redis itself."""
    async with connect(settings.redis_url) as r:
        yield r


@pytest.fixture
def store(redis: Redis, settings: Settings) -> JobStore:
    return JobStore.from_settings(redis, settings)


StartWorker = Callable[..., Awaitable[MsgqWorker]]


@pytest.fixture
async def start_worker(settings: Settings) -> AsyncIterator[StartWorker]:
    """Start in-process workers (arq Worker.async_run as a task); all closed at teardown."""
    running: list[tuple[MsgqWorker, asyncio.Task[None]]] = []

    async def start(custom: Settings | None = None, **overrides: Any) -> MsgqWorker:
        w = build_worker(custom or settings, handle_signals=False, **overrides)
        running.append((w, asyncio.create_task(w.async_run())))
        return w

    yield start
    for w, task in running:
        # A test ends when a record is terminal; arq may still be finishing that job (shielded
        # bookkeeping). Let it, then close: close() cancels whatever is still running.
        if w.tasks:
            await asyncio.wait(list(w.tasks.values()), timeout=10)
        with contextlib.suppress(asyncio.CancelledError):
            await w.close()
        await cancel_and_wait([task])  # a cancellation can be lost on 3.11 (msgq.cancel)


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment a `msgq worker` subprocess needs to match `settings`."""
    assert settings.anthropic_api_key is not None
    return {
        **os.environ,
        "REDIS_URL": settings.redis_url,
        "ANTHROPIC_API_KEY": settings.anthropic_api_key.get_secret_value(),
        "ANTHROPIC_BASE_URL": settings.anthropic_base_url,
        "MSGQ_LOCK_S": str(settings.lock_s),
        "MSGQ_POLL_DELAY_S": str(settings.poll_delay_s),
        "MSGQ_BACKOFF_BASE_S": str(settings.backoff_base_s),
        "MSGQ_BACKOFF_MAX_S": str(settings.backoff_max_s),
        "MSGQ_LOG_FORMAT": "json",
        "MSGQ_PARTITIONS": str(settings.partitions),
        **extra,
    }


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout_s: float = 15.0) -> None:
    """Poll `check` until it is true, failing after a deadline (never a bare sleep)."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.02)


SAMPLES = Path(__file__).parent.parent / "samples"


KEY_A, KEY_B = "key-a-0123456789", "key-b-0123456789"


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    # The suite's plain httpx calls are "older clients" that send no anthropic-version: they
    # get 2023-06-01, the documented default for them (tests of the requirement unset it).
    keys = SecretStr(f"tenant-a:{KEY_A},tenant-b:{KEY_B}")
    return settings.model_copy(
        update={"api_keys": keys, "http_anthropic_version_default": "2023-06-01"}
    )


@pytest.fixture
async def api(api_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API in-process (lifespan run), as tenant A by default."""
    from msgq.http.app import create_app

    app = create_app(api_settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://msgq.test", headers={"x-api-key": KEY_A}
        ) as http:
            yield http


@pytest.fixture
async def http(api_server: str) -> AsyncIterator[httpx.AsyncClient]:
    """Plain httpx against `api_server` over real HTTP, as tenant A."""
    async with httpx.AsyncClient(
        base_url=api_server, headers={"x-api-key": KEY_A}, timeout=30
    ) as client:
        yield client


@pytest.fixture
async def api_server(api_settings: Settings) -> AsyncIterator[str]:
    """The API served by uvicorn on a loopback port, in this event loop (real HTTP)."""
    import uvicorn

    from msgq.http.app import create_app

    port = free_port()
    config = uvicorn.Config(
        create_app(api_settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110  # uvicorn exposes a flag, not an event
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


async def zcard_parts(
    redis: Redis, key_of: Callable[[Keyspace], str], keys: Keyspace | None = None
) -> int:
    """ZCARD of a set each partition keeps (arq's queue, an index, the tickets), summed over
    the partitions: the whole deployment's count, whatever TEST_PARTITIONS says."""
    parts = (keys or KEYS).parts
    return sum([int(await redis.zcard(key_of(part))) for part in parts])
