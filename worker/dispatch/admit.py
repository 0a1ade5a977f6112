"""Admission of a run of jobs in one Lua step: each job's rate-limit capacity is acquired and the
job moved into arq's queue with its ticket, in policy order, until one must wait.

Why: admitting one job took two round trips (the limiter's acquire, then the move), made one
after the other by the fleet's single dispatcher, so filling hundreds of free slots took over a
second (512 slots: 1.1 s) and every slot freed waited its turn behind the others' round trips.
Here a run of up to `ADMIT_RUN` jobs costs one. It applies to jobs whose admission needs only
capacity (`Dispatcher._needs_ticket` false: no budget, no share cap); the others are admitted
one by one, in order, as before. Each job gets exactly what the single path gives it: the same
acquire step (`worker.ratelimit.ACQUIRE_STEP`), the same checks that it is still waiting and
still has its payload, the same ticket; a job that must wait stops the run and keeps its place.
"""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from msgq.channels import PUBLISH_LUA
from worker.dispatch.fair_share import FairShare, PolicyState
from worker.dispatch.queues import ADMITTED_TTL_S, MOVE_ONE, Head
from worker.ratelimit import ACQUIRE_STEP, RateLimiter

ADMIT_RUN = 64  # jobs per Lua step at most: the step stays well under a millisecond

# KEYS: the class's bucket, its cool-down, the pause, where, est, deadlines. ARGV: the wake
# channel, ticket ttl s, score ms, then per job: its scheduler queue, payload key, ticket key,
# ticket value, its `acquire` arguments as one JSON array (the job ID, holder, is the 8th), and
# its partition's arq queue and tickets index.
# Returns {statuses, wait_ms, why}: a status per job looked at (1 moved, 0 had left); the run
# stops at the first job that must wait (wait_ms > 0), which stays where it is.
ADMIT_MANY = (
    PUBLISH_LUA
    + ACQUIRE_STEP
    + MOVE_ONE
    + """
local statuses, moved = {}, 0
local wait, why = 0, ''
for i = 4, #ARGV, 7 do
  local queue, payload, ticket, value = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local a = cjson.decode(ARGV[i + 4])
  local id = a[8]
  local k = {queue, ARGV[i + 5], KEYS[4], KEYS[5], ticket, payload, KEYS[6], ARGV[i + 6]}
  if redis.call('ZSCORE', queue, id) and redis.call('EXISTS', payload) == 1 then
    local r = acquire(KEYS[1], KEYS[2], KEYS[3], a)
    if r[1] > 0 then
      wait, why = r[1], r[2]
      break
    end
    value = string.sub(value, 1, -2) .. ',"n":' .. r[3] .. '}'  -- the admission's count
    moved = moved + move_one(k, id, value, ARGV[2], ARGV[3])
    statuses[#statuses + 1] = 1
  else  -- it had left, or its payload is gone: move_one drops it from the scheduler
    move_one(k, id, value, ARGV[2], ARGV[3])
    statuses[#statuses + 1] = 0
  end
end
if moved > 0 then redis.call(publish_command(ARGV[1]), ARGV[1], moved) end
return {statuses, wait, why}
"""
)


class AdmitRun:
    """Collects, in policy order, the jobs of one model class that need only rate-limit
    capacity, and admits them in one step (`flush`)."""

    def __init__(self, redis: Redis, limiter: RateLimiter, policy: FairShare) -> None:
        self.limiter, self.policy = limiter, policy
        self.keys = limiter.keys  # the deployment's (the limiter's buckets are in it too)
        self._script = redis.register_script(ADMIT_MANY)
        self.heads: list[Head] = []
        self._before: PolicyState | None = None

    def add(self, head: Head) -> None:
        """Collect a job, before the policy charges it (as chosen)."""
        if not self.heads:
            self._before = self.policy.snapshot()
        self.heads.append(head)

    def full(self) -> bool:
        return len(self.heads) >= ADMIT_RUN

    def discard(self) -> None:
        """Drop the run unadmitted (an error before its flush): its jobs stay queued."""
        if self.heads and self._before is not None:
            self.policy.restore(self._before)
        self.heads, self._before = [], None

    async def flush(self, now_ms: int) -> tuple[int, float | None]:
        """(jobs moved, None) when every job was admitted or had left; else the seconds the
        first job that could not be admitted must wait. The policy charged each job as it was
        chosen; when some were not moved, it is put back as it was before the run and charged
        for the moved ones alone, in order, so it is exactly as if only those had been chosen."""
        heads, before = self.heads, self._before
        self.heads, self._before = [], None
        if not heads:
            return 0, None
        model = heads[0].estimate.model
        ks = self.keys
        keys = [
            *self.limiter.gate_keys(model),
            ks.sched_where,
            ks.sched_est,
            ks.sched_deadlines,
        ]
        args: list[Any] = [ks.queue_wake, ADMITTED_TTL_S, now_ms]
        for head in heads:
            args += self._args(head, now_ms)
        statuses, wait_ms, _why = await self._script(keys=keys, args=args)
        looked = [int(status) for status in statuses]  # the rest were not reached
        moved = sum(looked)
        if moved < len(heads) and before is not None:
            self.policy.restore(before)
            for head, status in zip(heads, looked, strict=False):
                if status:
                    self.policy.served(head)
        return moved, (min(int(wait_ms) / 1000, 1.0) if int(wait_ms) > 0 else None)

    def _args(self, head: Head, now_ms: int) -> list[Any]:
        est = head.estimate
        ticket = {"estimate": est.dumps().decode(), "limited": True}
        step = self.limiter.step_args(
            est.model,
            now_ms=now_ms,
            cost=(est.input_tokens, est.output_tokens),
            holder=head.job_id,
        )
        part = self.keys.for_job(head.job_id)  # the job's partition: its keys and arq queue
        return [
            head.queue,
            part.arq_job_key(head.job_id),
            part.admitted_key(head.job_id),
            orjson.dumps(ticket),
            orjson.dumps(step),
            part.queue,
            part.tickets_key,
        ]
