"""SSE streams are bounded: every stream in an API process shares one pub/sub subscription (so
Redis clients stay flat as streams open), and a tenant may hold at most
MSGQ_MAX_STREAMS_PER_TENANT open; beyond it, 429 `rate_limit_error` in the API's shape."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import uvicorn
from httpx_sse import ServerSentEvent, aconnect_sse
from redis.asyncio import Redis

from msgq.dev.embedded_redis import free_port
from msgq.http.app import create_app
from msgq.settings import Settings
from tests.conftest import KEY_A, KEY_B, eventually
from tests.test_crash import BODY


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[str]:
    """The API under uvicorn on a loopback port, in this event loop (real HTTP streaming)."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110  # uvicorn exposes a flag, not an event
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


class Streams:
    """Open event streams, each read up to its first event (so it is subscribed), held open."""

    def __init__(self, http: httpx.AsyncClient, stack: AsyncExitStack) -> None:
        self.http, self.stack = http, stack
        self.iterators: list[AsyncIterator[ServerSentEvent]] = []

    async def open(self, job_id: str, key: str = KEY_A) -> dict[str, Any]:
        source = await self.stack.enter_async_context(
            aconnect_sse(self.http, "GET", f"/v1/jobs/{job_id}/events", headers={"x-api-key": key})
        )
        assert source.response.status_code == 200
        events = source.aiter_sse()
        self.iterators.append(events)
        first = await anext(events)
        assert first.event == "status"
        data: dict[str, Any] = first.json()
        return data


async def clients(redis: Redis) -> int:
    return len(await redis.client_list())


async def submit(http: httpx.AsyncClient, job_id: str, key: str = KEY_A) -> None:
    answer = await http.post(
        "/v1/jobs", json={"request": BODY, "id": job_id}, headers={"x-api-key": key}
    )
    assert answer.status_code == 202, answer.text


async def test_open_streams_share_one_redis_connection(
    api_settings: Settings, redis: Redis
) -> None:
    """30 streams open at once (jobs queued, no worker): the API's Redis clients grow by at
    most a few, not one per stream; a job's status still arrives on each."""
    async with (
        serve(api_settings) as url,
        httpx.AsyncClient(
            base_url=url, timeout=10, limits=httpx.Limits(max_connections=50)
        ) as http,
        AsyncExitStack() as stack,
    ):
        for n in range(30):
            await submit(http, f"job-{n}")
        streams = Streams(http, stack)
        await streams.open("job-0")
        before = await clients(redis)
        for n in range(1, 30):
            assert (await streams.open(f"job-{n}"))["status"] == "queued"
        after = await clients(redis)
        assert after - before <= 3, (before, after)


async def test_streams_over_the_tenants_cap_get_429(api_settings: Settings) -> None:
    """Cap 3: tenant a's 4th stream is 429 `rate_limit_error` in the API's shape, tenant b is
    unaffected, and a stream a closes frees its slot."""
    capped = api_settings.model_copy(update={"max_streams_per_tenant": 3})
    async with (
        serve(capped) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as http,
        AsyncExitStack() as outer,
    ):
        for n in range(5):
            await submit(http, f"job-{n}")
        await submit(http, "b-job", key=KEY_B)
        held = Streams(http, outer)
        for n in range(2):
            await held.open(f"job-{n}")
        async with AsyncExitStack() as inner:
            third = Streams(http, inner)  # held: a collected iterator would close the stream
            await third.open("job-2")
            refused = await http.get("/v1/jobs/job-3/events", headers={"x-api-key": KEY_A})
            assert refused.status_code == 429
            body = refused.json()
            assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
            assert "MSGQ_MAX_STREAMS_PER_TENANT" in body["error"]["message"]
            await held.open("b-job", key=KEY_B)  # another tenant's cap is its own
        # The third stream is closed: its slot comes back once the server sees it go.

        async def slot_freed() -> bool:
            answer = await http.get("/v1/jobs/job-4?wait=0", headers={"x-api-key": KEY_A})
            assert answer.status_code == 200
            async with aconnect_sse(
                http, "GET", "/v1/jobs/job-4/events", headers={"x-api-key": KEY_A}
            ) as source:
                return source.response.status_code == 200

        await eventually(slot_freed, timeout_s=10)


async def test_each_api_process_holds_a_bounded_redis_pool(
    api_settings: Settings, redis: Redis
) -> None:
    """40 streams opening at once on one job add fewer than 10 Redis connections (the pool's
    default bound is 8, a subscription included; unbounded, they added 22-37), and a burst of
    300 reads waits its turn for a connection: every one answered, Redis clients still within
    the bound (unbounded: 136 more)."""
    assert api_settings.redis_max_connections == 8  # the default, as users run it
    async with (
        serve(api_settings.model_copy(update={"max_streams_per_tenant": 100})) as url,
        httpx.AsyncClient(
            base_url=url, timeout=30, limits=httpx.Limits(max_connections=400)
        ) as http,
        AsyncExitStack() as stack,
    ):
        await submit(http, "shared")
        before = await clients(redis)
        streams = Streams(http, stack)
        opened = await asyncio.gather(*(streams.open("shared") for _ in range(40)))
        assert all(first["status"] == "queued" for first in opened)
        after_streams = await clients(redis)
        assert after_streams - before < 10, (before, after_streams)
        headers = {"x-api-key": KEY_A}
        burst = await asyncio.gather(
            *(http.get("/v1/jobs/shared", headers=headers) for _ in range(300))
        )
        assert [answer.status_code for answer in burst] == [200] * 300
        after_burst = await clients(redis)
        assert after_burst - before <= 8, (before, after_burst)
