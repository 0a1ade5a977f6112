"""Redis Cluster, said plainly at start.

msgq keeps a deployment's state in one keyspace on one Redis node (or a Sentinel-watched
primary): its scripts and transactions touch keys that a cluster spreads over shards, so on a
cluster the first command answers MOVED or CROSSSLOT. Until msgq's keyspace is laid out for
shards, a cluster is refused at start with one line, whichever way it is named: a
`redis+cluster://` URL (the scheme msgq will take for a cluster's seed nodes), or a plain
`redis://` URL that reaches a node with `cluster_enabled:1`.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import ResponseError

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
NOT_YET = (
    "msgq does not run on Redis Cluster yet: give it one Redis node or a Sentinel-watched "
    "primary (redis://, rediss://, unix://, redis+sentinel://); "
    "see docs/operations/redis-cluster.md"
)


def is_cluster_url(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEMES)


class ClusterNodeError(RuntimeError):
    """REDIS_URL reaches a Redis Cluster."""


async def refuse_cluster_node(redis: Redis) -> None:
    """Raise ClusterNodeError when `redis` is a node of a cluster. A service that refuses INFO
    (a managed one's ACL) is taken at its word: nothing is said."""
    try:
        info = await redis.info("cluster")
    except ResponseError:
        return
    if int(info.get("cluster_enabled", 0)):
        msg = f"REDIS_URL reaches a node of a Redis Cluster (cluster_enabled:1). {NOT_YET}"
        raise ClusterNodeError(msg)
