"""Every Redis connection msgq makes: `connect()` for a plain URL, a Sentinel-managed primary,
or the Redis Cluster master that owns the deployment's slot (`redis+cluster://`, `msgq.cluster`).

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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload
from urllib.parse import unquote

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from msgq.cluster import (
    ClusterTarget,
    cluster_client,
    is_cluster_url,
    master_client,
    parse_cluster_url,
)
from msgq.failover import (
    BoundedConnectionPool,
    BoundedFailoverPool,
    FailoverConnection,
    FailoverPool,
    FailoverRetry,
    FailoverSSLConnection,
    FastConnectionPool,
)
from msgq.keys import Keyspace, keyspace
from msgq.partitions import PartitionClients
from msgq.redis_urls import parse_hosts_url
from msgq.slot_routing import Router, routed_class

if TYPE_CHECKING:
    from msgq.settings import Settings

SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_FAILOVER_WAIT_S = 30.0
R = TypeVar("R", bound=Redis)


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
    if not is_sentinel(url):
        msg = f"not a Sentinel URL: {url.partition('://')[0]}://"
        raise ValueError(msg)
    parsed = parse_hosts_url(url, default_port=DEFAULT_SENTINEL_PORT, kind="Sentinel")
    if not parsed.hosts:
        msg = "a Sentinel URL needs at least one host: redis+sentinel://h1:26379,h2/mymaster/0"
        raise ValueError(msg)
    service, _, db = parsed.path.strip("/").partition("/")
    if not service or (db and not db.isdigit()) or "/" in db:
        msg = "a Sentinel URL's path is /service or /service/db, e.g. /mymaster/0"
        raise ValueError(msg)
    return SentinelTarget(
        sentinels=parsed.hosts,
        service=unquote(service),
        db=int(db or 0),
        username=parsed.username,
        password=parsed.password,
        ssl=parsed.scheme == "rediss+sentinel",
    )


@overload
def connect(
    target: Settings | str,
    *,
    redis_class: type[R],
    failover_wait_s: float | None = None,
    keys: Keyspace | None = None,
    **options: Any,
) -> R: ...


@overload
def connect(
    target: Settings | str,
    *,
    failover_wait_s: float | None = None,
    keys: Keyspace | None = None,
    **options: Any,
) -> Redis: ...


def connect(
    target: Settings | str,
    *,
    redis_class: type[Redis] = Redis,
    failover_wait_s: float | None = None,
    keys: Keyspace | None = None,
    **options: Any,
) -> Redis:
    """A client for `target` (Settings or a URL); `options` go to redis-py as they are.

    Plain URLs behave as `Redis.from_url` (with the pool below; its client-only options,
    `single_connection_client` and `auto_close_connection_pool`, are not taken). For a Sentinel
    or cluster URL, `failover_wait_s` (else the setting `redis_failover_wait_s`) bounds how long
    one command waits out a failover. On a cluster the client talks to the master serving the
    deployment's slot: that of `keys`, else of Settings' keyspace, else of the default one.
    """
    url = target if isinstance(target, str) else target.redis_url
    bound = _bound(target, options)
    if not is_sentinel(url) and not is_cluster_url(url):
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
    if is_cluster_url(url):
        namespace = (keys or keyspace() if isinstance(target, str) else target.keys).namespace
        return _routed_cluster_client(
            parse_cluster_url(url), namespace, redis_class, failover_wait_s, pool_options
        )
    return _sentinel_client(parse_sentinel_url(url), redis_class, failover_wait_s, pool_options)


def partition_clients(settings: Settings, root: Redis) -> PartitionClients:
    """Each partition's client (`msgq.partitions`): `root`, the deployment's own, for all. On a
    cluster `root` (made by `connect`) sends each partition's commands to the master serving
    its slot (`msgq.slot_routing`)."""
    return PartitionClients(root, settings.keys)


def _routed_cluster_client(
    target: ClusterTarget,
    namespace: str,
    redis_class: type[R],
    failover_wait_s: float,
    pool_options: dict[str, Any],
) -> R:
    """A client pinned to the deployment's slot, routing partitions' commands to theirs."""
    keys = keyspace(namespace, clustered=True)
    client = cluster_client(
        target, keys.prefix, routed_class(redis_class), failover_wait_s, pool_options
    )

    def pinned(partition_prefix: str) -> Redis:
        return cluster_client(target, partition_prefix, Redis, failover_wait_s, pool_options)

    def master(address: tuple[str, int]) -> Redis:
        return master_client(target, address, pool_options)

    client.router = Router(keys.hash_tag, pinned, master)
    return client  # type: ignore[return-value]  # a subclass of redis_class, made at run time


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
