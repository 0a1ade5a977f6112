"""Pools and connections that outlast a lost primary: redis-py's, with a retry bounded by time,
no pool-wide lock on checkout, and one log line when the primary is lost and when it is found
again. Used for a Sentinel-watched primary (`msgq.connections`) and for the cluster master that
owns a deployment's slot (`msgq.cluster`): both find "the primary" anew on every new connection.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog
from redis.asyncio import BlockingConnectionPool, ConnectionPool, SSLConnection
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
)
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = structlog.get_logger("msgq.redis")
T = TypeVar("T")

# Set while a FailoverRetry loop runs: the retries redis-py nests inside a command (reconnect,
# then connect) make one attempt each, so every retry goes back to asking the Sentinels.
_retrying: contextvars.ContextVar[bool] = contextvars.ContextVar("_retrying", default=False)


class FailoverRetry(Retry):
    """redis-py's Retry bounded by time rather than by count.

    redis-py runs the same Retry at three levels (command, reconnect, socket connect). Counted,
    the innermost would keep dialling the dead primary's address; here only the outermost
    loops, and each of its attempts rediscovers the primary.
    """

    def __init__(self, wait_s: float) -> None:
        super().__init__(ExponentialBackoff(cap=1.0, base=0.05), retries=-1)
        self.wait_s = wait_s

    async def call_with_retry(
        self, do: Callable[[], Awaitable[T]], fail: Callable[[RedisError], Any]
    ) -> T:
        if _retrying.get():
            try:
                return await do()
            except self._supported_errors as error:
                await fail(error)
                raise
        token = _retrying.set(True)
        try:
            return await self._loop(do, fail)
        finally:
            _retrying.reset(token)

    async def _loop(self, do: Callable[[], Awaitable[T]], fail: Callable[[RedisError], Any]) -> T:
        deadline = time.monotonic() + self.wait_s
        failures = 0
        while True:
            try:
                return await do()
            except self._supported_errors as error:
                failures += 1
                await fail(error)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                await asyncio.sleep(min(self._backoff.compute(failures), left))


FRESH_S = 1.0  # a connection back in the pool this recently is handed out without a socket read


class QuickCheckout:
    """redis-py checks every connection it hands out with a zero-timeout socket read (a
    coroutine, a timeout object and a syscall): a tenth of a busy worker's CPU went there. A
    connection released less than `FRESH_S` ago, with nothing buffered and no end of stream
    seen, is handed out as it is; any other gets redis-py's full check. Reading past a reply on
    release is not possible (redis-py disconnects a connection whose command was cut short), so
    the read mostly found a server that closed the connection: one that has been idle."""

    async def ensure_connection(self, connection: AbstractConnection) -> None:
        if not _fresh(connection):
            await super().ensure_connection(connection)  # type: ignore[misc]  # a mixin for ConnectionPools

    async def release(self, connection: AbstractConnection) -> None:
        connection.msgq_released = time.monotonic()  # type: ignore[attr-defined]  # our mark
        await super().release(connection)  # type: ignore[misc]  # a mixin for ConnectionPools


def _fresh(connection: AbstractConnection) -> bool:
    released = getattr(connection, "msgq_released", None)
    if released is None or time.monotonic() - released > FRESH_S:
        return False
    stream = getattr(connection, "_reader", None)  # asyncio's StreamReader, None when closed
    parser = getattr(connection, "_parser", None)
    buffered: Any = getattr(parser, "_reader", None)  # hiredis's Reader (pure-Python: check)
    return (
        stream is not None
        and not stream.at_eof()
        and not stream._buffer  # no public "bytes waiting" on a StreamReader
        and getattr(parser, "_connected", False)
        and hasattr(buffered, "has_data")
        and not buffered.has_data()
    )


class NoLockOnCheckout(QuickCheckout):
    """redis-py 5.3 holds one asyncio.Lock per pool while it takes a connection *and* checks it
    (a socket read), so every command of a busy process queues behind that lock: in a worker
    with 16 jobs, most of them were waiting there rather than on Redis (redis-py #3692; fixed
    upstream after 5.x, which arq pins). Taking a connection is synchronous and needs no lock;
    the check runs outside it, as redis-py itself now does."""

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        pool: ConnectionPool = self  # type: ignore[assignment]  # a mixin for ConnectionPools
        connection: AbstractConnection = pool.get_available_connection()  # type: ignore[no-untyped-call]  # untyped upstream
        try:
            await pool.ensure_connection(connection)
        except BaseException:
            await pool.release(connection)
            raise
        return connection


class FastConnectionPool(NoLockOnCheckout, ConnectionPool):
    """A plain Redis URL's pool, unbounded (a bare URL: scripts, tests, arq's own pool)."""


class BoundedConnectionPool(QuickCheckout, BlockingConnectionPool):
    """A plain Redis URL's pool for a process built from Settings. redis-py's blocking pool
    already checks a connection outside its lock, so it needs no `NoLockOnCheckout`."""


def _address(address: tuple[Any, Any] | None) -> str | None:
    return None if address is None else f"{address[0]}:{address[1]}"


class FailoverPool(NoLockOnCheckout, SentinelConnectionPool):
    """Remembers the primary it last reached, so it can say when (and how long) it lost it and
    where it resumed: one line each, however many connections notice."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]  # untyped upstream
        self.reached: tuple[Any, Any] | None = None
        self.lost_at: float | None = None

    async def get_master_address(self) -> tuple[Any, Any]:
        try:
            address: tuple[Any, Any] = await super().get_master_address()  # type: ignore[no-untyped-call]  # untyped upstream
        except MasterNotFoundError as exc:
            self.lost(self.reached, exc)
            raise
        return address

    def lost(self, address: tuple[Any, Any] | None, exc: BaseException) -> None:
        if self.lost_at is None and self.reached is not None:
            self.lost_at = time.monotonic()
            log.warning(
                "redis.primary_unavailable",
                service=self.service_name,
                primary=_address(address),
                error=type(exc).__name__,
            )

    def reconnected(self, address: tuple[Any, Any]) -> None:
        waited_s = None if self.lost_at is None else round(time.monotonic() - self.lost_at, 2)
        if self.reached is not None and address != self.reached:
            log.warning(
                "redis.failover",
                service=self.service_name,
                old_primary=_address(self.reached),
                new_primary=_address(address),
                waited_s=waited_s,
            )
        elif waited_s is not None:
            log.info("redis.primary_reconnected", primary=_address(address), waited_s=waited_s)
        self.reached, self.lost_at = address, None

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:  # the client is closing: so are its connections to the Sentinels
            for sentinel in self.sentinel_manager.sentinels:
                await sentinel.connection_pool.disconnect()


class FailoverConnection(SentinelManagedConnection):
    """Reports reaching (or failing to reach) the primary to its FailoverPool."""

    async def connect_to(self, address: tuple[Any, Any]) -> None:
        pool: FailoverPool = self.connection_pool
        try:
            await super().connect_to(address)  # type: ignore[no-untyped-call]  # untyped upstream
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            if pool.is_master:
                pool.lost(address, exc)
            raise
        if pool.is_master:
            pool.reconnected(address)


class FailoverSSLConnection(FailoverConnection, SSLConnection):
    pass


class BoundedFailoverPool(FailoverPool):
    """FailoverPool with BlockingConnectionPool's wait: redis-py has no blocking Sentinel pool,
    and its Sentinel pool past `max_connections` raises at once instead of waiting."""

    def __init__(
        self, service_name: str, sentinel_manager: Sentinel, *, timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)
        self._freed = asyncio.Condition()
        self.timeout = timeout

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        try:
            async with self._freed, asyncio.timeout(self.timeout):
                await self._freed.wait_for(self.can_get_connection)
                connection: AbstractConnection = self.get_available_connection()  # type: ignore[no-untyped-call]  # untyped upstream
        except TimeoutError:
            msg = "No connection available."
            raise RedisConnectionError(msg) from None
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        async with self._freed:
            await super().release(connection)
            self._freed.notify()
