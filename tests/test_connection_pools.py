"""The two pools on the worker's hot path: Redis connections handed out without a pool-wide
lock, and the API calls spread over several small httpx pools."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio.connection import AbstractConnection

from msgq.connections import FastConnectionPool, connect
from msgq.settings import Settings
from worker.upstream import UpstreamClients


async def test_a_slow_connection_check_does_not_hold_up_other_commands(redis_url: str) -> None:
    """redis-py 5.3 checks a pooled connection under a lock shared by the whole pool, so one
    slow check queues every other command of the process behind it. Here the first checkout's
    check is held open until a second checkout has completed: with that lock, the second
    could never complete and the test would fail on its deadline."""
    pool = FastConnectionPool.from_url(redis_url)
    first_checking = asyncio.Event()
    release_first = asyncio.Event()
    plain_ensure = pool.ensure_connection
    calls = 0

    async def ensure(connection: AbstractConnection) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            first_checking.set()
            await release_first.wait()
        return await plain_ensure(connection)

    pool.ensure_connection = ensure  # type: ignore[method-assign]
    try:
        first = asyncio.create_task(pool.get_connection())
        await asyncio.wait_for(first_checking.wait(), 5)
        second = await asyncio.wait_for(pool.get_connection(), 5)
        assert not first.done()
        release_first.set()
        assert await asyncio.wait_for(first, 5) is not second
    finally:
        await pool.disconnect()


async def test_every_client_msgq_makes_uses_the_lock_free_pool(redis_url: str) -> None:
    async with connect(redis_url) as redis:
        assert isinstance(redis.connection_pool, FastConnectionPool)
        assert await redis.ping()


async def test_api_calls_are_spread_over_small_pools(settings: Settings) -> None:
    """Sixteen concurrent jobs get eight clients in turn (two calls each), sharing one TLS
    context; the Batches API calls use the first."""
    upstream = UpstreamClients(settings.model_copy(update={"max_jobs": 16}))
    try:
        picked = [upstream.pick() for _ in range(16)]
        assert len(upstream.clients) == 8
        assert all(picked.count(client) == 2 for client in upstream.clients)
        contexts = {id(c._transport._pool._ssl_context) for c in upstream.clients}  # type: ignore[attr-defined]
        assert len(contexts) == 1
    finally:
        await upstream.aclose()
