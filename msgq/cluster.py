"""Redis Cluster (`redis+cluster://`): msgq talks to the master that owns its deployment's slot.

On a cluster every key of a deployment carries one hash tag (`{msgq}:...`, see
`msgq.keys.Keyspace.clustered`), so all of them live in one slot, on one master at a time. Each
of msgq's scripts, transactions (MULTI/EXEC, WATCH) and subscriptions then runs on that master
exactly as it runs on a single node: the cluster never sees a cross-slot step, and the same code
is what the single-node suite exercises.

Why not redis-py's own `RedisCluster`: arq pins `redis<6`, and redis-py 5.x's asyncio cluster
client has no transactional pipeline and no pub/sub, both of which msgq's worker, API and arq
itself use. A pool pinned to the slot's owner keeps them all.

Finding the owner: `SlotOwner` stands where redis-py's Sentinel manager stands for a Sentinel
pool. On every new connection it asks the seed nodes (and every master it has learned of since)
`CLUSTER SLOTS` for the master serving the slot. A connection answered `MOVED`, `ASK`,
`TRYAGAIN` or `CLUSTERDOWN` (a failover promoted a replica, or an operator moved the slot) is
dropped and the command goes again on a fresh connection, with backoff, until the client's
failover wait has passed: as with Sentinel, commands in flight during a failover land on the new
master. Nothing ran on a node that answered one of those, so sending again is safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from redis.asyncio import Connection, Redis, SSLConnection
from redis.asyncio.sentinel import MasterNotFoundError
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from msgq.failover import (
    BoundedConnectionPool,
    BoundedFailoverPool,
    FailoverConnection,
    FailoverPool,
    FailoverRetry,
    FastConnectionPool,
)
from msgq.redis_urls import parse_hosts_url

log = structlog.get_logger("msgq.redis")

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
DEFAULT_CLUSTER_PORT = 6379
# A node's answer when the slot is not (or not yet, or no longer) served there: nothing ran.
SLOT_ELSEWHERE = ("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN")
R = TypeVar("R", bound=Redis)


def is_cluster_url(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEMES)


@dataclass(frozen=True)
class ClusterTarget:
    """A parsed `redis+cluster://` URL: the seed nodes and the data nodes' credentials."""

    seeds: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    ssl: bool = False


def parse_cluster_url(url: str) -> ClusterTarget:
    """`redis+cluster://[[user]:password@]host[:port][,host[:port]...][/0]` (port 6379 when
    left out; `rediss+cluster://` for TLS). Raises ValueError naming what is wrong."""
    if not is_cluster_url(url):
        msg = f"not a cluster URL: {url.partition('://')[0]}://"
        raise ValueError(msg)
    parsed = parse_hosts_url(url, default_port=DEFAULT_CLUSTER_PORT, kind="cluster node")
    if not parsed.hosts:
        msg = "a cluster URL needs at least one node: redis+cluster://h1:6379,h2:6379"
        raise ValueError(msg)
    if parsed.path.strip("/") not in ("", "0"):
        msg = f"a Redis Cluster has one database (0); the URL names /{parsed.path.strip('/')[:20]}"
        raise ValueError(msg)
    return ClusterTarget(
        seeds=parsed.hosts,
        username=parsed.username,
        password=parsed.password,
        ssl=parsed.scheme == "rediss+cluster",
    )


def slot_of(prefix: str) -> int:
    """The hash slot of every key starting with `prefix` (a `{tag}:`)."""
    return int(key_slot(prefix.encode()))


class SlotOwner:
    """Asked for "the master" on every new connection of its pool (as redis-py's `Sentinel`
    is), it answers with the address of the master serving `slot`, from the first node that
    answers `CLUSTER SLOTS`. Nodes it learns of are asked too, so losing the seeds named in the
    URL does not lose the cluster."""

    def __init__(self, target: ClusterTarget, slot: int) -> None:
        self.target = target
        self.slot = slot
        self.known: list[tuple[str, int]] = list(target.seeds)
        # Named as redis-py's Sentinel names its clients: FailoverPool closes their pools.
        self.sentinels: list[Redis] = []
        self._nodes: dict[tuple[str, int], Redis] = {}

    def _node(self, address: tuple[str, int]) -> Redis:
        node = self._nodes.get(address)
        if node is None:
            node = Redis(
                host=address[0],
                port=address[1],
                username=self.target.username,
                password=self.target.password,
                ssl=self.target.ssl,
                socket_connect_timeout=1.0,
                socket_timeout=1.0,
            )
            self._nodes[address] = node
            self.sentinels.append(node)
        return node

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        asked = 0
        for address in list(self.known):
            asked += 1
            try:
                node = self._node(address)
                slots = await node.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]  # untyped upstream
            except (RedisError, OSError):
                continue
            owner = self._learn(slots, address[0])
            if owner is not None:
                self.known.remove(address)  # asked first next time: a dead seed costs no wait
                self.known.insert(0, address)
                return owner
        msg = f"no cluster node named a master for slot {self.slot} (asked {asked})"
        raise MasterNotFoundError(msg)

    def _learn(self, slots: Any, asked_host: str) -> tuple[str, int] | None:
        """The owner of `self.slot` in a CLUSTER SLOTS answer; every master in it is added to
        the nodes asked next time."""
        owner = None
        for start, end, master, *_replicas in slots:
            host = _text(master[0])
            if host == "?":  # its endpoint is unknown: skip it
                continue
            address = (host or asked_host, int(master[1]))  # an empty host: the node asked
            if address not in self.known:
                self.known.append(address)
            if int(start) <= self.slot <= int(end):
                owner = address
        return owner


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def check_serves(redis: Redis, prefix: str) -> None:
    """ValueError when `redis` is a cluster client pinned to another deployment's slot (made by
    `connect(url)` for the default namespace, say, and handed to a namespace's Client): every
    command would otherwise fail later on a key outside its slot."""
    owner = getattr(redis.connection_pool, "sentinel_manager", None)
    if isinstance(owner, SlotOwner) and owner.slot != slot_of(prefix):
        msg = (
            f"this Redis client serves cluster slot {owner.slot}, not the deployment's "
            f"({slot_of(prefix)}, keys {prefix}...): make it with connect(settings)"
        )
        raise ValueError(msg)


class SlotOwnerConnection(FailoverConnection):
    """A connection to the slot's master. Told the slot is served elsewhere, it drops itself and
    raises a connection error, which the client's FailoverRetry answers by asking `SlotOwner`
    again and sending the command to the master it names."""

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except ResponseError as exc:
            reply = str(exc)
            if not reply.startswith(SLOT_ELSEWHERE):
                raise
            words = reply.split()
            slot = self.connection_pool.sentinel_manager.slot
            if words[0] in ("MOVED", "ASK") and words[1:2] != [str(slot)]:
                # A key outside the deployment's hash tag: no failover will bring it here.
                msg = f"a key outside the deployment's slot {slot} ({reply[:40]}): a msgq bug"
                raise ResponseError(msg) from None
            await self.disconnect()
            msg = f"the deployment's slot is not served by {self.host}:{self.port} ({reply[:40]})"
            raise RedisConnectionError(msg) from None


class SlotOwnerSSLConnection(SlotOwnerConnection, SSLConnection):
    pass


def _node_options(target: ClusterTarget) -> dict[str, Any]:
    """What every connection to a data node takes, whichever pool holds it."""
    return {
        "username": target.username,
        "password": target.password,
        "socket_connect_timeout": 2.0,  # a dead host must not hold a reconnect for minutes
        "socket_keepalive": True,
    }


def cluster_client(
    target: ClusterTarget,
    prefix: str,
    redis_class: type[R],
    failover_wait_s: float,
    options: dict[str, Any],
) -> R:
    """A client of the master serving the slot of `prefix` (the deployment's `{tag}:`)."""
    slot = slot_of(prefix)
    kwargs: dict[str, Any] = {
        **_node_options(target),
        "ssl": target.ssl,
        "retry": FailoverRetry(failover_wait_s),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        "connection_class": SlotOwnerSSLConnection if target.ssl else SlotOwnerConnection,
        **options,
    }
    pool_class = BoundedFailoverPool if "timeout" in kwargs else FailoverPool
    pool = pool_class(f"cluster slot {slot}", SlotOwner(target, slot), **kwargs)  # type: ignore[arg-type]  # SlotOwner answers what the pool asks of a Sentinel
    client: R = redis_class(connection_pool=pool)
    client.auto_close_connection_pool = True  # closing the client closes its pool
    return client


def master_client(
    target: ClusterTarget, address: tuple[str, int], options: dict[str, Any]
) -> Redis:
    """A plain client of one master, for the commands of several slots it serves sent in one
    pipeline (`msgq.slot_routing`). No retry and no failover handling of its own: a slot it
    answers `MOVED` for, or a lost connection, sends the commands again through each slot's
    own client (`cluster_client`), which finds the slot's master anew."""
    kwargs: dict[str, Any] = {
        **_node_options(target),
        "host": address[0],
        "port": address[1],
        "connection_class": SSLConnection if target.ssl else Connection,
        **options,
    }
    pool_class = BoundedConnectionPool if "timeout" in kwargs else FastConnectionPool
    client = Redis(connection_pool=pool_class(**kwargs))
    client.auto_close_connection_pool = True
    return client
