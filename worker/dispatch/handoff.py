"""Moving admitted jobs from the scheduler to their partition's arq queue, in two atomic steps.

The scheduler's queues, the limiter's buckets and the fair-share state are fleet-wide (the
deployment's own hash tag); a job's payload, ticket and arq queue are in its partition
(`msgq.keys.Keyspace.for_job`). On a Redis Cluster those are different slots, often different
shards, and no script may touch both. So a move is two steps, each atomic in one slot:

1. **leave** (the deployment's slot): the job is taken out of its scheduler queue and its
   entries (`where`, `est`, deadline) dropped, only if it is still waiting, so a job canceled
   or expired meanwhile is not admitted. Capacity is acquired in the same step by the caller's
   script when it is needed (`worker.dispatch.admit`).
2. **enter** (the job's partition): its ticket written and indexed, and the job queued in arq's
   queue, only if its payload is still there. All the partitions' steps go in one pipeline (on
   a cluster one per shard, sent at once), with the workers' wake.

A dispatcher that dies between the two leaves a job in neither queue, with its payload and no
lock. The reconciler finds exactly that (an orphan, seen on two passes in a row) and queues it
again (`worker.reconciler`); the capacity taken for it is not given back, as with any lease of
a dead dispatcher: the bucket refills. With one partition both steps are in the same slot and
run the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from msgq.channels import publish
from msgq.keys import Keyspace
from msgq.script_calls import declare, run_each

# KEYS: where, est, deadlines, then scheduler queues. ARGV: (job id, its queue's place in KEYS)
# pairs. One status per job: 1 when it was still waiting (now out of the scheduler), 0 when it
# had left.
LEAVE_ONE = """
local function leave(id, queue, where, est, deadlines)
  local was = redis.call('ZREM', queue, id)
  redis.call('HDEL', where, id)
  redis.call('HDEL', est, id)
  redis.call('ZREM', deadlines, id)
  return was
end
"""
LEAVE = (
    LEAVE_ONE
    + """
local out = {}
for i = 1, #ARGV, 2 do
  out[#out + 1] = leave(ARGV[i], KEYS[tonumber(ARGV[i + 1])], KEYS[1], KEYS[2], KEYS[3])
end
return out
"""
)

# KEYS: the partition's arq queue, its tickets index, then per job its payload and ticket keys.
# ARGV: score ms, ticket ttl s, then per job its ID and ticket value ('' for none). One status
# per job: 1 queued (with its ticket), 0 its payload is gone (nothing written).
ENTER = """
local out = {}
for j = 3, #ARGV, 2 do
  local id, ticket = ARGV[j], ARGV[j + 1]
  local at = j  -- job k's ARGV pair and KEYS pair start at the same index
  if redis.call('EXISTS', KEYS[at]) == 1 then
    if ticket ~= '' then
      redis.call('SET', KEYS[at + 1], ticket, 'EX', ARGV[2])
      redis.call('ZADD', KEYS[2], ARGV[1], id)
    end
    redis.call('ZADD', KEYS[1], ARGV[1], id)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""


@dataclass(frozen=True)
class Entry:
    """A job that left the scheduler, to be queued with its ticket (None: no ticket)."""

    job_id: str
    ticket: bytes | None = None


class Handoff:
    """The two steps, for the dispatcher and its admission runs."""

    def __init__(self, redis: Redis, keys: Keyspace, ticket_ttl_s: int) -> None:
        self.redis, self.keys, self.ticket_ttl_s = redis, keys, ticket_ttl_s
        self._leave = redis.register_script(LEAVE)
        self._enter = redis.register_script(ENTER)

    async def leave(self, jobs: Sequence[tuple[str, str]]) -> list[bool]:
        """Take (job ID, scheduler queue) pairs out of the scheduler: True for each that was
        still waiting."""
        if not jobs:
            return []
        names = [self.keys.sched_where, self.keys.sched_est, self.keys.sched_deadlines]
        args = [value for job_id, queue in jobs for value in (job_id, declare(names, queue))]
        return [bool(int(s)) for s in await self._leave(keys=names, args=args)]

    async def enter(self, entries: Sequence[Entry], score_ms: int) -> dict[str, bool]:
        """Queue each job in its partition's arq queue with its ticket: True for each queued
        (False: its payload is gone). The idle workers are woken when any was."""
        if not entries:
            return {}
        groups: dict[int, list[Entry]] = {}
        for entry in entries:
            groups.setdefault(self.keys.partition_of(entry.job_id), []).append(entry)
        calls = [self._call(self.keys.part(p), group, score_ms) for p, group in groups.items()]
        wake = len(calls)  # the workers' wake, sent with the steps

        def then(pipe: Pipeline) -> None:
            publish(pipe, self.keys, self.keys.queue_wake, wake)

        replies = await run_each(self.redis, self._enter, calls, then=then)
        entered: dict[str, bool] = {}
        for group, statuses in zip(groups.values(), replies, strict=True):
            entered |= {e.job_id: bool(int(s)) for e, s in zip(group, statuses, strict=True)}
        return entered

    def _call(
        self, part: Keyspace, group: list[Entry], score_ms: int
    ) -> tuple[list[str], list[Any]]:
        keys: list[str] = [part.queue, part.tickets_key]
        args: list[Any] = [score_ms, self.ticket_ttl_s]
        for entry in group:
            keys += [part.arq_job_key(entry.job_id), part.admitted_key(entry.job_id)]
            args += [entry.job_id, entry.ticket or b""]
        return keys, args
