"""A plain `redis://` URL that reaches a node of a Redis Cluster, said plainly at start.

On a cluster msgq keeps every key of a deployment under one hash tag and talks to the master
serving that slot (`msgq.cluster`): it must know it is on a cluster, so a cluster is named as
`redis+cluster://`. Given a plain URL to a cluster node, the first command would answer MOVED
(or worse, land on the right node by chance and later fail over to nowhere); the worker would
retry it every few seconds without saying why. Instead it exits at start with one line naming
the scheme.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.exceptions import ResponseError

NAME_THE_CLUSTER = (
    "name a cluster as REDIS_URL=redis+cluster://host:port[,host:port...] "
    "(rediss+cluster:// with TLS); see docs/operations/redis-cluster.md"
)


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
        msg = f"REDIS_URL reaches a node of a Redis Cluster (cluster_enabled:1): {NAME_THE_CLUSTER}"
        raise ClusterNodeError(msg)
