"""Where a job waits for admission: the fair-share scheduler's queues (one per model class,
priority and tenant), and the estimate admission reserves against the limits and the budget.

Producers place a job here instead of in arq's queue; the dispatcher (worker.dispatch.dispatcher,
one per fleet) moves it into arq's queue once it is admitted, so the order in which work reaches
the API is decided at the one point where it is scarce: the organisation's rate limit. Batch-
lane jobs, and raw-Redis jobs written straight to arq's queue, do not pass through here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from msgq.channels import publish
from msgq.estimate import estimate_input_tokens
from msgq.keys import Keyspace
from msgq.pricing import prices_for
from msgq.settings import Settings
from msgq.tenancy.budgets import reserve_usd
from msgq.tenancy.tenants import Tenants, load_tenants
from schemas import Lane, MessageRequest, Priority
from schemas.capabilities import rate_limit_class

# The backlog invariant: every scheduler queue that holds a job is listed in the backlog, the
# only queues the dispatcher reads; a job in an unlisted queue is never admitted and never ends.
# Placement lists its queue in the transaction that queues the job, and the dispatcher unlists
# a queue only atomically with seeing it empty (PRUNE_BACKLOG). The reconciler lists again any
# queue found holding a job while unlisted (RELIST_BACKLOG), whatever the cause.

# KEYS: the backlog, then scheduler queues the dispatcher read empty. Each is unlisted only if
# it is still empty now. A plain SREM after the read could unlist a queue that a job was placed
# in meanwhile (its SADD a no-op, the queue still being listed): a caption job stayed `queued`
# for good that way in about one full Sentinel test run in eight.
PRUNE_BACKLOG = """
for i = 2, #KEYS do
  if redis.call('ZCARD', KEYS[i]) == 0 then redis.call('SREM', KEYS[1], KEYS[i]) end
end
return 1
"""

# KEYS: the backlog, then scheduler queues. ARGV: (job id, its queue's place in KEYS) pairs.
# Lists again each queue that holds its job but is unlisted; returns the IDs of the jobs that
# needed it.
RELIST_BACKLOG = """
local relisted = {}
for i = 1, #ARGV, 2 do
  local id, queue = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
  if redis.call('ZSCORE', queue, id) and redis.call('SISMEMBER', KEYS[1], queue) == 0 then
    redis.call('SADD', KEYS[1], queue)
    relisted[#relisted + 1] = id
  end
end
return relisted
"""


@dataclass(frozen=True)
class Estimate:
    """What admission reserves for one call (limits and budget) and settles afterwards."""

    model: str
    input_tokens: int
    output_tokens: int
    usd: float

    def dumps(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def loads(cls, raw: bytes | str) -> Estimate:
        data = orjson.loads(raw)
        return cls(data["model"], data["input_tokens"], data["output_tokens"], data["usd"])


@dataclass(frozen=True)
class QueueId:
    """Which scheduler queue a job waits in, as data: the queue's key is a digest of it, so no
    model name or tenant (any string a caller chose) is ever parsed back out of a key."""

    cls: str
    priority: Priority
    tenant: str | None

    def key(self, keys: Keyspace) -> str:
        return keys.sched_queue_key(self.cls, self.priority.value, self.tenant)


@dataclass(frozen=True)
class Waiting:
    """One waiting job as the dispatcher reads it (`sched_est`): its queue, what admission will
    reserve for it, and its deadline (ms), so a job past it ends `expired` even while it waits."""

    queue: QueueId
    estimate: Estimate
    deadline_ms: int | None = field(default=None)

    def dumps(self) -> bytes:
        data: dict[str, Any] = asdict(self.estimate)
        data |= {"cls": self.queue.cls, "priority": self.queue.priority.value}
        data |= {"tenant": self.queue.tenant, "deadline_ms": self.deadline_ms}
        return orjson.dumps(data)

    @classmethod
    def loads(cls, raw: bytes | str) -> Waiting:
        """Raises ValueError, KeyError or TypeError for an entry that is not one (the caller
        contains it to that job). Entries written before queue identity was data carry none:
        they get their model's class at the default priority, without a tenant."""
        data = orjson.loads(raw)
        estimate = Estimate.loads(raw)
        queue = QueueId(
            str(data.get("cls") or rate_limit_class(estimate.model)),
            Priority(data.get("priority") or Priority.DEFAULT.value),
            data.get("tenant"),
        )
        deadline = data.get("deadline_ms")
        return cls(queue, estimate, None if deadline is None else int(deadline))


def estimate(request: MessageRequest, settings: Settings) -> Estimate:
    tokens = estimate_input_tokens(request)
    prices = prices_for(request.model, settings.prices_file)
    usd = reserve_usd(prices, tokens, request.max_tokens)
    return Estimate(request.model, tokens, request.max_tokens, usd)


@dataclass(frozen=True)
class Placement:
    """A job's scheduler queue, its estimate and its deadline."""

    waiting: Waiting
    keys: Keyspace

    @property
    def queue(self) -> str:
        return self.waiting.queue.key(self.keys)

    @property
    def estimate(self) -> Estimate:
        return self.waiting.estimate

    def write(self, pipe: Redis, job_id: str, score_ms: int) -> None:
        """Queue the job on `pipe`, in the caller's transaction with its record and payload."""
        pipe.zadd(self.queue, {job_id: score_ms}, nx=True)
        pipe.hset(self.keys.sched_where, job_id, self.queue)
        pipe.hset(self.keys.sched_est, job_id, self.waiting.dumps().decode())
        pipe.sadd(self.keys.sched_backlog, self.queue)
        if self.waiting.deadline_ms is not None:
            pipe.zadd(self.keys.sched_deadlines, {job_id: self.waiting.deadline_ms})
        wake_dispatcher(pipe, self.keys, job_id)


# How long a wake stays owed: the dispatcher clears it as a woken tick starts; if nobody does (no
# dispatcher, a lost message), the next job placed after this long wakes it again.
WAKE_OWED_MS = 1000
# The same step as the runner's WAKE_ONCE (`msgq.jobs.store_scripts`), for a pipeline.
WAKE_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then
  redis.call(ARGV[2], ARGV[3], ARGV[4])
end
return 1
"""


def wake_dispatcher(pipe: Any, keys: Keyspace, message: str) -> None:
    """Wake the dispatcher unless a wake is owed already (`sched_woken` set, and not yet
    cleared by a tick): a burst of submissions sends it one message, not one each, and each
    producer's step stays one round trip (measured: 2.2 -> 1.3 Redis round trips a submission).
    On `pipe`, in the caller's step: a script's command list (the job store's `Recorder`), or a
    pipeline."""
    args = (keys.sched_woken, WAKE_OWED_MS, keys.publish_command, keys.sched_wake, message)
    if getattr(pipe, "in_script", False):
        pipe.execute_command("WAKE_ONCE", *args)
    else:
        pipe.eval(WAKE_ONCE, 1, *args)


async def resume_fleet(redis: Redis, keys: Keyspace) -> bool:
    """Lift the spend-limit pause and wake the dispatcher in the same step. Without the wake
    admission restarted only at the dispatcher's next look, up to a second later, and a fleet
    of hundreds of slots sat idle for it. True when the fleet was paused."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.pause_key)
        publish(pipe, keys, keys.sched_wake, "resume")
        deleted, _ = await pipe.execute()
    return bool(deleted)


def uses_scheduler(settings: Settings, lane: Lane | None) -> bool:
    return settings.scheduler and lane in (None, Lane.REALTIME)


def resolve_priority(
    priority: Priority | str | None, tenant: str | None, tenants: Tenants
) -> Priority:
    """An explicit priority, else the tenant's default, else `default`."""
    if priority is not None:
        return Priority(priority)
    return tenants.get(tenant).default_priority


def placement(
    request: MessageRequest,
    priority: Priority,
    tenant: str | None,
    settings: Settings,
    deadline: datetime | None = None,
) -> Placement:
    queue = QueueId(rate_limit_class(request.model), priority, tenant)
    deadline_ms = None if deadline is None else int(deadline.timestamp() * 1000)
    return Placement(Waiting(queue, estimate(request, settings), deadline_ms), settings.keys)


def tenants_of(settings: Settings) -> Tenants:
    return load_tenants(settings.tenants_file)
