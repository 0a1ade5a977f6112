"""One Lua script run over many (KEYS, ARGV) in one pipeline: each partition's step at once.

With partitions a step that was one script call becomes one call a partition (each in its own
slot, `msgq.keys`). Sent in one plain pipeline they cost one round trip on one node, and on a
cluster one per shard sent at once (`msgq.slot_routing`). By SHA: a script object in a pipeline
costs a `SCRIPT EXISTS` round trip every time. A `NOSCRIPT` (Redis restarted, or a shard met
for the first time) loads the script and sends the calls again, so each must be safe to repeat.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

Call = tuple[Sequence[str], Sequence[Any]]  # a script call's KEYS and ARGV


async def run_each(
    redis: Redis,
    script: AsyncScript,
    calls: Sequence[Call],
    *,
    then: Callable[[Pipeline], object] | None = None,
) -> list[Any]:
    """Each call's reply, in order. `then` queues more commands after the calls (a wake, say);
    their replies are not returned."""
    if not calls:
        return []
    for _ in range(2):
        async with redis.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            if then is not None:
                then(pipe)
            try:
                return list((await pipe.execute())[: len(calls)])
            except NoScriptError:
                await redis.script_load(script.script)
    msg = "a Lua script could not be loaded"
    raise NoScriptError(msg)
