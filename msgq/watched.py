"""`watched`: Redis's optimistic transaction (WATCH, read, MULTI, write, EXEC) with its retry,
written once. The body reads through the pipeline while the keys are watched and returns its
answer with the writes to queue, or with None when there is nothing to write; a write that lost
to another client's runs the body again on what that client wrote."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

T = TypeVar("T")
Writes = Callable[[Pipeline], object]  # queues the transaction's commands on the pipeline
Body = Callable[[Pipeline], Awaitable[tuple[T, Writes | None]]]


async def watched(redis: Redis, keys: Sequence[str], body: Body[T]) -> T:
    """Run `body` under WATCH of `keys` until its writes commit (or it has none)."""
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(*keys)
                answer, writes = await body(pipe)
                if writes is None:
                    await pipe.unwatch()  # type: ignore[no-untyped-call]  # redis-py: untyped
                    return answer
                pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
                writes(pipe)
                await pipe.execute()
                return answer
            except WatchError:
                continue
