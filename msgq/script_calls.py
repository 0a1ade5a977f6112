"""One Lua script run over many (KEYS, ARGV) in one pipeline: each partition's step at once.

With partitions a step that was one script call becomes one call a partition (each in its own
slot, `msgq.keys`). Sent in one plain pipeline they cost one round trip on one node, and on a
cluster one per shard sent at once (`msgq.slot_routing`). By SHA: a script object in a pipeline
costs a `SCRIPT EXISTS` round trip every time. A `NOSCRIPT` (Redis restarted, or a shard met
for the first time) loads the script and sends again only the calls it refused: on a cluster the
other shards' calls ran already, and must not run twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

Call = tuple[Sequence[str], Sequence[Any]]  # a script call's KEYS and ARGV


def declare(keys: list[Any], key: Any) -> int:
    """`key`'s place in a script call's KEYS (from 1, as Lua counts), added if new. A script
    reaching a key named in data (a scheduler queue held in a hash) takes it from KEYS by this
    place, so every key it touches is declared: Redis asks that, a cluster checks it."""
    if key in keys:
        return keys.index(key) + 1
    keys.append(key)
    return len(keys)


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
    replies: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for _ in range(2):
        async with redis.pipeline(transaction=False) as pipe:
            for index in todo:
                keys, args = calls[index]
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            if then is not None:
                then(pipe)  # again with a resend: a spare wake costs a look, a missed one waits
            answers = await pipe.execute(raise_on_error=False)
        missed = sort_answers(todo, answers, replies)
        if not missed:
            return replies
        await redis.script_load(script.script)
        todo = missed
    msg = "a Lua script could not be loaded"
    raise NoScriptError(msg)


def sort_answers(todo: list[int], answers: list[Any], replies: list[Any]) -> list[int]:
    """Put each call's answer (`answers`, as sent for the positions `todo`, then any extra
    commands') in `replies`; the positions a NOSCRIPT refused. Any other error is raised."""
    missed = []
    for index, answer in zip(todo, answers, strict=False):
        if isinstance(answer, NoScriptError):
            missed.append(index)
        elif isinstance(answer, Exception):
            raise answer
        else:
            replies[index] = answer
    for answer in answers[len(todo) :]:
        if isinstance(answer, Exception):
            raise answer
    return missed
