"""Every Redis connection msgq makes: `connect()` for a plain URL or a Sentinel-managed primary.

`redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]` names the
Sentinels (port 26379 when left out), the service they monitor and the database;
`rediss+sentinel://` is the same over TLS (Sentinels and data nodes). The password is the data
nodes'; Sentinels are reached without one.

A Sentinel client asks the Sentinels for the primary on every new connection. A command that
fails on a lost connection (or on a primary demoted to a replica, which answers READONLY) is
sent again on a fresh one, with backoff, until `failover_wait_s` has passed: commands in flight
during a failover land on the new primary instead of failing. `redis.failover` is logged once
per client when it resumes on a new primary.

Every pool hands out connections without redis-py 5.3's pool-wide lock (see `NoLockOnCheckout`).
A client built from Settings is bounded: at most `redis_max_connections` connections, and a
command finding them all busy waits for one (up to `redis_pool_timeout_s`) rather than opening
another. Unbounded, a burst opened one connection per concurrent command and kept them all (40
SSE streams opening on one job added 37 to an API process).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload
from urllib.parse import unquote

import structlog
from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis, SSLConnection
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

if TYPE_CHECKING:
    from msgq.settings import Settings

log = structlog.get_logger("msgq.redis")

SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_FAILOVER_WAIT_S = 30.0
R = TypeVar("R", bound=Redis)
T = TypeVar("T")


@dataclass(frozen=True)
class SentinelTarget:
    """A parsed `redis+sentinel://` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False


def is_sentinel(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEMES)


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Raises ValueError naming what is wrong (Settings shows it at start-up)."""
    scheme, _, rest = url.partition("://")
    if scheme + "://" not in SENTINEL_SCHEMES:
        msg = f"not a Sentinel URL: {scheme}://"
        raise ValueError(msg)
    rest = rest.split("?", 1)[0]
    netloc, _, path = rest.partition("/")
    auth, _, hosts = netloc.rpartition("@")
    username, _, password = auth.partition(":")
    sentinels = tuple(_host_port(item) for item in hosts.split(",") if item)
    if not sentinels:
        msg = "a Sentinel URL needs at least one host: redis+sentinel://h1:26379,h2/mymaster/0"
        raise ValueError(msg)
    service, _, db = path.strip("/").partition("/")
    if not service or (db and not db.isdigit()) or "/" in db:
        msg = "a Sentinel URL's path is /service or /service/db, e.g. /mymaster/0"
        raise ValueError(msg)
    return SentinelTarget(
        sentinels=sentinels,
        service=unquote(service),
        db=int(db or 0),
        username=unquote(username) or None,
        password=unquote(password) or None,
        ssl=scheme == "rediss+sentinel",
    )


def _host_port(item: str) -> tuple[str, int]:
    if item.startswith("["):  # [::1]:26379
        host, _, port = item[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = item.partition(":")
    if not host or (port and not port.isdigit()):
        msg = f"bad Sentinel address {item!r}: host or host:port"
        raise ValueError(msg)
    return host, int(port or DEFAULT_SENTINEL_PORT)


@overload
def connect(
    target: Settings | str,
    *,
    redis_class: type[R],
    failover_wait_s: float | None = None,
    **options: Any,
) -> R: ...


@overload
def connect(
    target: Settings | str, *, failover_wait_s: float | None = None, **options: Any
) -> Redis: ...


def connect(
    target: Settings | str,
    *,
    redis_class: type[Redis] = Redis,
    failover_wait_s: float | None = None,
    **options: Any,
) -> Redis:
    """A client for `target` (Settings or a URL); `options` go to redis-py as they are.

    Plain URLs behave as `Redis.from_url` (with the pool below; its client-only options,
    `single_connection_client` and `auto_close_connection_pool`, are not taken). For a Sentinel
    URL, `failover_wait_s` (else the setting `redis_failover_wait_s`) bounds how long one command
    waits out a failover.
    """
    url = target if isinstance(target, str) else target.redis_url
    bound = _bound(target, options)
    if not is_sentinel(url):
        # What `Redis.from_url` does, with the pools below.
        if bound is None:
            pool: ConnectionPool = FastConnectionPool.from_url(url, **options)
        else:
            pool = BoundedConnectionPool.from_url(url, **options, **bound)
        client: Redis = redis_class(connection_pool=pool)
        client.auto_close_connection_pool = True
        return client
    if failover_wait_s is None:
        failover_wait_s = (
            DEFAULT_FAILOVER_WAIT_S if isinstance(target, str) else target.redis_failover_wait_s
        )
    pool_options = options if bound is None else {**options, **bound}
    return _sentinel_client(parse_sentinel_url(url), redis_class, failover_wait_s, pool_options)


def _bound(target: Settings | str, options: dict[str, Any]) -> dict[str, Any] | None:
    """The pool's bound (connections, wait for one) from Settings; None for a bare URL."""
    if isinstance(target, str):
        return None
    return {
        "max_connections": options.pop("max_connections", target.redis_max_connections),
        "timeout": options.pop("timeout", target.redis_pool_timeout_s),
    }


def _sentinel_client(
    target: SentinelTarget, redis_class: type[R], failover_wait_s: float, options: dict[str, Any]
) -> R:
    sentinel_options = {"socket_connect_timeout": 1.0, "socket_timeout": 1.0}
    if target.ssl:
        sentinel_options["ssl"] = True
    sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]  # redis-py leaves Sentinel untyped
    kwargs: dict[str, Any] = {
        "db": target.db,
        "username": target.username,
        "password": target.password,
        "socket_connect_timeout": 2.0,  # a dead host must not hold a reconnect for minutes
        "socket_keepalive": True,
        "retry": FailoverRetry(failover_wait_s),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "connection_class": FailoverSSLConnection if target.ssl else FailoverConnection,
        **options,
    }
    bounded = "timeout" in kwargs
    client: R = sentinel.master_for(
        target.service,
        redis_class=redis_class,
        connection_pool_class=BoundedFailoverPool if bounded else FailoverPool,
        **kwargs,
    )
    return client


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


class NoLockOnCheckout:
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


class BoundedConnectionPool(BlockingConnectionPool):
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
