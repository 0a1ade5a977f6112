"""The two pools on the worker's hot path: Redis connections handed out without a pool-wide
lock, and the API calls over one aiohttp session that may open `max_jobs * 2` connections."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from redis.asyncio.connection import AbstractConnection

from msgq.connections import FastConnectionPool, connect
from msgq.dev.embedded_redis import free_port
from msgq.errors import InvalidResponseError, UnavailableError
from msgq.settings import Settings
from worker.upstream.client import Upstream, send_message

Handler = Callable[[web.Request], Awaitable[web.Response]]


@contextlib.asynccontextmanager
async def messages_server(handler: Handler) -> AsyncIterator[str]:
    """A server on a loopback port answering `POST /v1/messages` with `handler`: its URL."""
    app = web.Application()
    app.router.add_post("/v1/messages", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


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


async def test_a_connection_just_used_is_handed_out_without_a_socket_read(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py reads the socket (zero timeout) on every checkout; a connection released a
    moment ago with nothing buffered skips it. One that a server closed is still found out:
    the next command goes on a new connection."""
    reads = 0
    plain_read = AbstractConnection.can_read_destructive

    async def counted(connection: AbstractConnection) -> Any:
        nonlocal reads
        reads += 1
        return await plain_read(connection)

    monkeypatch.setattr(AbstractConnection, "can_read_destructive", counted)
    async with connect(redis_url) as redis, connect(redis_url) as admin:
        await redis.ping()  # a new connection: checked
        first = reads
        for _ in range(20):
            await redis.get("x")
        assert reads == first  # used a moment ago: not read again
        killed = await redis.client_id()
        await admin.client_kill_filter(_id=killed)
        await eventually_closed(redis)
        assert await redis.ping()
        assert await redis.client_id() != killed


async def eventually_closed(redis: Any) -> None:
    """Until the pool's idle connection has seen the server close it."""
    connection = redis.connection_pool._available_connections[0]
    for _ in range(200):
        if connection._reader is None or connection._reader.at_eof():
            return
        await asyncio.sleep(0.01)


async def test_every_client_msgq_makes_uses_the_lock_free_pool(redis_url: str) -> None:
    async with connect(redis_url) as redis:
        assert isinstance(redis.connection_pool, FastConnectionPool)
        assert await redis.ping()


async def test_api_calls_share_one_session_of_twice_max_jobs_connections(
    settings: Settings,
) -> None:
    """Forty calls at once with max_jobs 16: the server sees exactly 32 open at the peak (the
    session's limit, 2 x max_jobs), and the last eight go out as the first ones end."""
    open_now = peak = 0
    release = asyncio.Event()

    async def hold(request: web.Request) -> web.Response:
        nonlocal open_now, peak
        open_now += 1
        peak = max(peak, open_now)
        await release.wait()
        open_now -= 1
        return web.json_response({"not": "a Message"})

    async with messages_server(hold) as url:
        upstream = Upstream(settings.model_copy(update={"max_jobs": 16, "anthropic_base_url": url}))
        try:
            calls = [
                asyncio.create_task(send_message(upstream, {"model": "m"}, stream=False))
                for _ in range(40)
            ]
            for _ in range(100):
                if open_now >= 32:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # room for any call beyond the limit to arrive
            assert (open_now, peak) == (32, 32)
            release.set()
            for call in calls:
                with pytest.raises(InvalidResponseError):
                    await call
            assert peak == 32
        finally:
            release.set()
            await upstream.aclose()


async def test_the_session_verifies_tls_by_default(settings: Settings) -> None:
    upstream = Upstream(settings)
    try:
        tls = upstream.session.connector._ssl  # type: ignore[union-attr]
        assert isinstance(tls, ssl.SSLContext)
        assert tls.verify_mode is ssl.CERT_REQUIRED and tls.check_hostname
    finally:
        await upstream.aclose()


async def test_calls_go_through_the_proxy_the_environment_names(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The base URL's host does not exist; the call still succeeds because it went to the
    HTTP_PROXY, which saw the whole target URL (proxy form) and answered. NO_PROXY naming the
    host turns the proxy off again, and the call then fails to connect."""
    seen: list[str] = []

    async def proxy(request: web.Request) -> web.Response:
        seen.append(str(request.url))
        message = {
            "id": "msg_proxy",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "via the proxy"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 3, "output_tokens": 3},
        }
        return web.json_response(message)

    async with messages_server(proxy) as proxy_url:
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        remote = settings.model_copy(update={"anthropic_base_url": "http://api.msgq-test.invalid"})
        upstream = Upstream(remote)
        try:
            reply = await send_message(upstream, {"model": "m"}, stream=False)
            assert reply.message["id"] == "msg_proxy"
            assert seen and seen[0].startswith("http://api.msgq-test.invalid")
        finally:
            await upstream.aclose()
        monkeypatch.setenv("NO_PROXY", "api.msgq-test.invalid")
        direct = Upstream(remote)
        try:
            with pytest.raises(UnavailableError):
                await send_message(direct, {"model": "m"}, stream=False)
            assert len(seen) == 1
        finally:
            await direct.aclose()
