"""The scheduler's queues as the dispatcher reads them (`Head`: one waiting job) and the Lua
steps that move admitted jobs into arq's queue, each only if the job is still waiting."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from msgq.channels import PUBLISH_LUA
from msgq.tenancy.scheduling import Estimate, Waiting
from schemas import Priority

ADMITTED_TTL_S = 3600
HEADS_PER_QUEUE = 64

# `move_one(k, id, value, ttl, score)`, k = {scheduler queue, arq queue, where, est, admitted
# marker, arq job payload, deadlines, the tickets index}: 1 when moved with its ticket; 0 when
# the job had left (canceled, expired) or its payload is gone (then it is dropped from the
# scheduler), so nothing is admitted twice or for nothing. Shared with the run's admission
# (worker.dispatch.admit), which moves many in one step.
MOVE_ONE = """
local function move_one(k, id, value, ttl, score)
  if redis.call('ZREM', k[1], id) == 0 then return 0 end
  redis.call('HDEL', k[3], id)
  redis.call('HDEL', k[4], id)
  redis.call('ZREM', k[7], id)
  if redis.call('EXISTS', k[6]) == 0 then return 0 end
  redis.call('SET', k[5], value, 'EX', ttl)
  redis.call('ZADD', k[8], score, id)
  redis.call('ZADD', k[2], score, id)
  return 1
end
"""

# KEYS: as `move_one`'s k. ARGV: job id, score ms, admitted value, admitted ttl s, the workers'
# wake channel. The idle workers are woken when it moved.
MOVE = (
    PUBLISH_LUA
    + MOVE_ONE
    + """
local moved = move_one(KEYS, ARGV[1], ARGV[3], ARGV[4], ARGV[2])
if moved == 1 then redis.call(publish_command(ARGV[5]), ARGV[5], 1) end
return moved
"""
)


# KEYS: where, est, deadlines. ARGV: score ms, the workers' wake channel, then (job id, its
# scheduler queue, its payload key, its partition's arq queue) for each job. Each moves only if
# it is still in its scheduler queue and has a payload. The idle workers are woken when any moved.
MOVE_MANY = (
    PUBLISH_LUA
    + """
local moved = 0
for i = 3, #ARGV, 4 do
  local id, queue, payload, arq_queue = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if redis.call('ZREM', queue, id) == 1 then
    redis.call('HDEL', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
    if redis.call('EXISTS', payload) == 1 then
      redis.call('ZADD', arq_queue, ARGV[1], id)
      moved = moved + 1
    end
  end
end
if moved > 0 then redis.call(publish_command(ARGV[2]), ARGV[2], moved) end
return moved
"""
)


@dataclass
class Head:
    """One waiting job at the front of its scheduler queue. Its identity comes from the job's
    own entry (`Waiting`), never from the queue's key."""

    queue: str
    job_id: str
    waiting: Waiting
    backlog: int  # how many jobs were read from its queue (HEADS_PER_QUEUE: maybe more wait)

    @property
    def cls(self) -> str:
        return self.waiting.queue.cls

    @property
    def priority(self) -> Priority:
        return self.waiting.queue.priority

    @property
    def tenant(self) -> str:
        return self.waiting.queue.tenant or "_"

    @property
    def estimate(self) -> Estimate:
        return self.waiting.estimate

    @property
    def tokens(self) -> int:
        return self.estimate.input_tokens + self.estimate.output_tokens


def advance(queues: dict[str, deque[Head]], head: Head, *, blocked: bool) -> bool:
    """Move past a head that was dispatched or had left; a blocked tenant's head stays (the
    policy skips the tenant until it is unblocked). True when the heads read from a queue ran
    out while it may hold more: the tick must re-read, or that tenant would drop out of the
    comparison while it is still backlogged."""
    if blocked:
        return False
    queues[head.queue].popleft()
    if queues[head.queue]:
        return False
    del queues[head.queue]
    return head.backlog >= HEADS_PER_QUEUE
