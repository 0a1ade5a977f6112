"""msgq's pub/sub, plain on one node and sharded on a Redis Cluster.

On a cluster a plain `PUBLISH` is forwarded over the cluster bus to every node, whatever the
channel: each message of msgq (job endings, progress, the dispatcher's and workers' wakes, a
few per job) would load every shard of a cluster that may hold other deployments too. Sharded
pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7) keeps a message on the shard that owns the channel's
slot, and msgq's channels carry the deployment's hash tag, so they live on its master with its
keys. On one node msgq keeps `PUBLISH`, which every Redis version has.

`publish()` sends on a client or queues on a pipeline; scripts take the command's name from
`Keyspace.publish_command`. `subscriber()` is the PubSub to read them: redis-py 5's asyncio
PubSub (arq pins `redis<6`) has no sharded subscribe, so `ShardedPubSub` adds it, with the same
messages (`type` "message") and the same resubscription after a reconnect.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.commands.helpers import list_or_args
from redis.exceptions import ConnectionError

from msgq.keys import Keyspace
from msgq.slot_routing import SlotRouting

# For scripts: the publish command a channel calls for, told from its name (a `{tag}` first is
# a cluster's channel, `Keyspace.publish_command`), so a script needs no extra argument.
PUBLISH_LUA = """
local function publish_command(channel)
  if string.sub(channel, 1, 1) == '{' then return 'SPUBLISH' end
  return 'PUBLISH'
end
"""
SHARDED_TYPES = {"smessage": "message", "ssubscribe": "subscribe", "sunsubscribe": "unsubscribe"}


def publish(redis: Any, keys: Keyspace, channel: str, message: str | bytes | int) -> Any:
    """PUBLISH, or SPUBLISH on a cluster: awaitable on a client, queued on a pipeline."""
    return redis.execute_command(keys.publish_command, channel, message)


async def listeners(redis: Redis, keys: Keyspace, channel: str) -> int:
    """How many subscribers `channel` has (PUBSUB NUMSUB, or SHARDNUMSUB on a cluster)."""
    kind = "SHARDNUMSUB" if keys.clustered else "NUMSUB"
    reply = await redis.execute_command("PUBSUB", kind, channel)  # type: ignore[no-untyped-call]  # untyped upstream
    return int(reply[1])  # [channel, count]


def subscriber(redis: Redis, keys: Keyspace) -> PubSub:
    """A PubSub for this deployment's channels (`async with subscriber(redis, keys) as p`)."""
    if keys.clustered:
        # A partition's channels are on the master of its slot (`msgq.slot_routing`).
        pool = redis.pool_for(keys.prefix) if isinstance(redis, SlotRouting) else None
        return ShardedPubSub(pool or redis.connection_pool)
    return redis.pubsub()


class ShardedPubSub(PubSub):
    """redis-py's asyncio PubSub over sharded channels: `subscribe` sends SSUBSCRIBE (and so
    does the resubscription after a reconnect), and sharded replies read as plain ones."""

    PUBLISH_MESSAGE_TYPES = ("message", "pmessage", "smessage")  # type: ignore[assignment]  # typed as a 2-tuple upstream
    UNSUBSCRIBE_MESSAGE_TYPES = ("unsubscribe", "punsubscribe", "sunsubscribe")  # type: ignore[assignment]  # typed as a 2-tuple upstream

    async def subscribe(self, *args: Any, **kwargs: Any) -> Any:
        parsed = list_or_args((args[0],), args[1:]) if args else ()
        channels: dict[Any, Any] = dict.fromkeys(parsed)
        channels.update(kwargs)
        reply = await self.execute_command("SSUBSCRIBE", *channels.keys())
        channels = self._normalize_keys(channels)
        self.channels.update(channels)
        self.pending_unsubscribe_channels.difference_update(channels)
        return reply

    async def unsubscribe(self, *args: Any) -> Any:
        parsed = list_or_args(args[0], args[1:]) if args else []
        channels = self._normalize_keys(dict.fromkeys(parsed)) if args else self.channels
        self.pending_unsubscribe_channels.update(channels)
        return await self.execute_command("SUNSUBSCRIBE", *parsed)

    async def handle_message(self, response: Any, ignore_subscribe_messages: bool = False) -> Any:
        if _moved_away(response, self.channels, self.pending_unsubscribe_channels):
            # The slot moved to another shard: Redis unsubscribes us unasked. Reconnecting finds
            # the new owner (msgq.cluster) and subscribes again there.
            if self.connection is not None:
                await self.connection.disconnect()
            msg = "the deployment's slot moved: its sharded channels were unsubscribed"
            raise ConnectionError(msg)
        message = await super().handle_message(response, ignore_subscribe_messages)  # type: ignore[no-untyped-call]  # untyped upstream
        if message is not None:
            kind = message["type"]
            kind = kind.decode() if isinstance(kind, bytes) else kind
            message["type"] = SHARDED_TYPES.get(kind, kind)
        return message


def _moved_away(response: Any, channels: dict[Any, Any], pending: set[Any]) -> bool:
    """An `sunsubscribe` nobody asked for, for a channel still subscribed."""
    if not isinstance(response, list) or len(response) < 2:
        return False
    kind = response[0].decode() if isinstance(response[0], bytes) else response[0]
    return kind == "sunsubscribe" and response[1] in channels and response[1] not in pending
