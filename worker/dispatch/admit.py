"""Admission of a run of jobs in one Lua step: each job's rate-limit capacity is acquired and the
job moved into arq's queue with its ticket, in policy order, until one must wait.

Why: admitting one job took two round trips (the limiter's acquire, then the move), made one
after the other by the fleet's single dispatcher, so filling hundreds of free slots took over a
second (512 slots: 1.1 s) and every slot freed waited its turn behind the others' round trips.
Here a run of up to `ADMIT_RUN` jobs costs one. It applies to jobs whose admission needs only
capacity (`Dispatcher._needs_ticket` false: no budget, no share cap); the others are admitted
one by one, in order, as before. Each job gets exactly what the single path gives it: the same
acquire step (`worker.ratelimit_scripts.ACQUIRE_STEP`), the same checks that it is still waiting and
still has its payload, the same ticket; a job that must wait stops the run and keeps its place.
"""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis

from msgq.script_calls import declare
from worker.dispatch.fair_share import FairShare, PolicyState
from worker.dispatch.handoff import Entry, Handoff
from worker.dispatch.queues import Head
from worker.ratelimit import RateLimiter
from worker.ratelimit_scripts import ACQUIRE_STEP

ADMIT_RUN = 64  # jobs per Lua step at most: the step stays well under a millisecond

# KEYS: the class's bucket, its cool-down, the pause, where, est, deadlines, then the jobs'
# scheduler queues. ARGV: per job, STEP_WIDTH values: its scheduler queue's place in KEYS, then
# its `acquire` arguments (the job ID, holder, is the 8th of them).
# Returns {statuses, counts, wait_ms, why}: a status per job looked at (1 admitted and out of
# the scheduler, with its admission count; 0 had left); the run stops at the first job that must
# wait (wait_ms > 0), which stays where it is. The jobs admitted are then queued in their
# partitions (`worker.dispatch.handoff`): one slot per step, as a Redis Cluster requires.
# The jobs looked at leave the scheduler together at the end, one command a key for the whole
# run (four a job before), and the bucket is written once: this runs on the fleet-wide slot.
STEP_WIDTH = 12
ADMIT_MANY = (
    ACQUIRE_STEP
    + """
local statuses, counts, left, looked = {}, {}, {}, {}
local wait, why = 0, ''
local function run()
  for i = 1, #ARGV, 12 do
    local queue = KEYS[tonumber(ARGV[i])]
    local id = ARGV[i + 8]
    if redis.call('ZSCORE', queue, id) then
      local r = acquire(KEYS[1], KEYS[2], KEYS[3], ARGV, i)
      if r[1] > 0 then
        wait, why = r[1], r[2]
        break
      end
      statuses[#statuses + 1] = 1
      counts[#counts + 1] = r[3]
    else  -- it had left: its entries go too
      statuses[#statuses + 1] = 0
      counts[#counts + 1] = 0
    end
    if not left[queue] then left[queue] = {} end
    table.insert(left[queue], id)
    looked[#looked + 1] = id
  end
end
local function leave_all()
  if #looked == 0 then return end
  redis.call('HDEL', KEYS[4], unpack(looked))
  redis.call('HDEL', KEYS[5], unpack(looked))
  redis.call('ZREM', KEYS[6], unpack(looked))
  for queue, ids in pairs(left) do redis.call('ZREM', queue, unpack(ids)) end
end
-- An error part way (a queue of the wrong type): the jobs admitted before it leave the
-- scheduler, and what they took is saved, before the error is raised.
local ok, err = pcall(run)
local left_ok, left_err = pcall(leave_all)
save_bucket()
if not ok then error(err) end
if not left_ok then error(left_err) end
return {statuses, counts, wait, why}
"""
)


class AdmitRun:
    """Collects, in policy order, the jobs of one model class that need only rate-limit
    capacity, and admits them in one step (`flush`)."""

    def __init__(
        self, redis: Redis, limiter: RateLimiter, policy: FairShare, handoff: Handoff
    ) -> None:
        self.limiter, self.policy, self.handoff = limiter, policy, handoff
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
        args: list[Any] = []
        for head in heads:
            args += [declare(keys, head.queue), *self._step(head, now_ms)]
        statuses, counts, wait_ms, _why = await self._script(keys=keys, args=args)
        looked = [int(status) for status in statuses]  # the rest were not reached
        admitted = [(h, int(n)) for h, s, n in zip(heads, looked, counts, strict=False) if s]
        entered = await self.handoff.enter([self._entry(h, n) for h, n in admitted], now_ms)
        for head, _ in admitted:
            if not entered[head.job_id]:  # its payload is gone: its capacity goes back
                await self.limiter.settle(
                    model,
                    input_delta=head.estimate.input_tokens,
                    output_delta=head.estimate.output_tokens,
                    requests=1,
                )
        moved = [h for h, _ in admitted if entered[h.job_id]]
        if len(moved) < len(heads) and before is not None:
            self.policy.restore(before)
            for head in moved:
                self.policy.served(head)
        return len(moved), (min(int(wait_ms) / 1000, 1.0) if int(wait_ms) > 0 else None)

    def _step(self, head: Head, now_ms: int) -> list[Any]:
        est = head.estimate
        step = self.limiter.step_args(
            est.model,
            now_ms=now_ms,
            cost=(est.input_tokens, est.output_tokens),
            holder=head.job_id,
        )
        return step  # STEP_WIDTH - 1 values: the script reads them by place (tested)

    @staticmethod
    def _entry(head: Head, count: int) -> Entry:
        """The job's ticket: its estimate, limited, and the admission's count."""
        ticket = {"estimate": head.estimate.dumps().decode(), "limited": True, "n": count}
        return Entry(head.job_id, orjson.dumps(ticket))
