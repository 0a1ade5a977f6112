"""Group commit: the script calls a busy worker makes for its jobs (a record's compare-and-set,
a ticket moved into a ledger, a ledger settled, a bucket corrected, a spend counted), sent
together in one round trip instead of one each.

Why: each job cost the worker about seven round trips of its own, and packing, sending and
awaiting commands (a write syscall each) took a large share of its CPU. Here every caller queues
its script call and awaits its own reply; whatever was queued while the previous batch was on
the wire goes in the next one. With nothing else waiting a call is sent at once (no timer, no
added latency); under load one pipeline carries the calls of every job that got that far
meanwhile.

Each call stays a script of its own, atomic as before, and keeps its own reply and its own error
(one failing call fails only its caller). The exception is a call queued with `merge=True`, for
a script written to apply any number of calls' arguments one after another (ARGV is theirs,
concatenated, and its one reply is every caller's): the calls of one batch on the same keys go
as one script call. Every job's ending corrects the fleet's rate-limit bucket and counts its
spend, on the one fleet-wide slot; merged, the bucket is read and written once a batch, not once
a job. A merged call that fails fails each of its callers.

A connection lost mid-pipeline is met as it was for a call on its own: redis-py applies the
connection's retry policy to a pipeline exactly as to one command, and every caller of the batch
sees the error it would have seen. The scripts go by SHA; one the server lost (restarted, failed
over) is loaded and only the calls that found it missing are sent again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError


@dataclass
class _Call:
    script: AsyncScript
    keys: list[Any]
    args: list[Any]
    merge: bool = False
    reply: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass
class _Send:
    """One script call on the wire: a caller's, or several callers' merged."""

    script: AsyncScript
    keys: list[Any]
    args: list[Any]


def merged(batch: list[_Call]) -> tuple[list[_Send], list[int]]:
    """The script calls to send for a batch, and for each caller the index of its call: the
    `merge` calls of one script on the same keys become one, their arguments in queue order."""
    sends: list[_Send] = []
    where: list[int] = []
    first: dict[tuple[str, tuple[Any, ...]], int] = {}
    for call in batch:
        key = (call.script.sha, tuple(call.keys))
        if call.merge and key in first:
            sends[first[key]].args.extend(call.args)
            where.append(first[key])
            continue
        if call.merge:
            first[key] = len(sends)
        where.append(len(sends))
        sends.append(_Send(call.script, call.keys, list(call.args)))
    return sends, where


class GroupCommit:
    """Script calls from many tasks, sent in one pipeline per turn of the event loop."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._queued: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None
        self.batches = 0  # pipelines sent (for tests and figures: calls / batches)
        self.calls = 0
        self.sent = 0  # script calls sent: fewer than `calls` where calls were merged

    async def call(
        self, script: AsyncScript, keys: list[Any], args: list[Any], *, merge: bool = False
    ) -> Any:
        """The script's reply, as `await script(keys=keys, args=args)` would give it.
        `merge`: the script takes several calls' arguments at once (above)."""
        call = _Call(script, keys, args, merge)
        self._queued.append(call)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_queued())
        return await asyncio.shield(call.reply)

    async def _send_queued(self) -> None:
        while self._queued:
            batch, self._queued = self._queued, []
            try:
                replies = await self._send(batch)
            except BaseException as exc:  # the pipeline as a whole: every caller gets the error
                for call in batch:  # (a cancelled sender, at shutdown: as a lost connection)
                    if not call.reply.done():
                        call.reply.set_exception(
                            exc if isinstance(exc, Exception) else RedisConnectionError(repr(exc))
                        )
                if not isinstance(exc, Exception):
                    raise
                continue
            for call, reply in zip(batch, replies, strict=True):
                if isinstance(reply, Exception):
                    call.reply.set_exception(reply)
                else:
                    call.reply.set_result(reply)

    async def _send(self, batch: list[_Call]) -> list[Any]:
        """Each caller's reply (or error), in the batch's order."""
        sends, where = merged(batch)
        self.batches += 1
        self.calls += len(batch)
        self.sent += len(sends)
        replies = await self._pipeline(sends)
        missing = [n for n, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            for script in {id(sends[n].script): sends[n].script for n in missing}.values():
                script.sha = await self.redis.script_load(script.script)
            again = await self._pipeline([sends[n] for n in missing])
            for n, reply in zip(missing, again, strict=True):
                replies[n] = reply
        return [replies[n] for n in where]

    async def _pipeline(self, calls: list[_Send]) -> list[Any]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for call in calls:
                pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies
