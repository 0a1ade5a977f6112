"""The batch lane in the worker: the task's routing (pool the job instead of calling
`/v1/messages`) and the manager loop that one worker at a time runs (batcher + poller).

Which jobs take the lane: `lane: batch`, and `lane: auto` when the deadline is at least
`batch_sla_s` away (or there is none). A job the Batches API would refuse (`stream: true`,
`speed`, `max_tokens: 0`) fails with a `validation_error` naming the rule when it asked for
`batch` (it asked for half price; a silent full-price call would surprise it), and runs
realtime when it asked for `auto`.
"""

from __future__ import annotations

import asyncio

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from msgq import lanes
from msgq.cancel import cancel_and_wait
from msgq.jobs.records import utcnow
from msgq.jobs.store import JobStore
from schemas import JobError, JobErrorType, JobRecord, JobSpec, JobStatus, Lane, MessageRequest
from worker import tracing, transitions
from worker.fleet_lock import FleetLock
from worker.lane import budget as batch_budget
from worker.lane import records as batch_records
from worker.lane.api import LaneApi
from worker.lane.poller import Poller
from worker.lane.pool import Batcher, now_ms
from worker.services import Services
from worker.transitions import RunningJob

log = structlog.get_logger("msgq.batch")
LANE_IDLE_S = 5.0  # the lane's look while nothing is pooled and no upstream batch is due


async def route(
    services: Services,
    run: RunningJob,
    record: JobRecord,
    spec: JobSpec,
    request: MessageRequest,
) -> bool:
    """True when the job is the batch lane's (pooled now, or already there): the task is done
    with it. False: send it realtime. A tenant's budget is reserved before it is pooled (it
    may fail the job, or defer it in arq's queue, as for a realtime attempt)."""
    lane = lanes.resolve_lane(
        spec.lane, deadline=record.deadline, now=utcnow(), sla_s=services.settings.batch_sla_s
    )
    if lane is not Lane.BATCH:
        return False
    refused = lanes.batch_refusal(spec.request)
    if refused is not None:
        if spec.lane is Lane.AUTO:
            log.info("job.lane_chosen", lane="realtime", reason=refused)
            return False
        message = f"lane batch: {refused} (use lane realtime or auto)"
        error = JobError(type=JobErrorType.VALIDATION, message=message)
        await transitions.finish(services.store, run, JobStatus.FAILED, error=error)
        return True
    if await services.redis.hexists(services.settings.keys.lane_where, record.id):  # type: ignore[misc]  # redis-py stubs
        return True  # a re-run after a crash: it is pooled or upstream already
    if not await batch_budget.reserve(services, run, record, request):
        return True
    stored = await services.store.update(record.id, batch_records.pooled)
    if stored is None or stored.status.terminal:
        await batch_budget.settle(
            services.redis,
            services.settings.keys,
            record.id,
            tenant=None,
            cost_usd=None,
            model=None,
        )
        return True
    payload = orjson.dumps(spec.model_dump(mode="json", exclude_none=True))
    await lanes.pool_job(services.redis, services.settings.keys, record.id, payload, now_ms())
    log.info("job.pooled", lane="batch", model=record.model)
    tracing.queued(stored, until=utcnow())
    return True


class BatchLane:
    """`await BatchLane(services).run_forever()` in every worker; one holds the lock and acts."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.api = LaneApi(services.http)
        self.batcher = Batcher(services, self.api)
        self.poller = Poller(services, self.api, self.batcher)
        self.lock = FleetLock(services.redis, services.settings.keys.lane_lock)
        self.holding = False
        self.sized = False
        self.tick_s = min(
            1.0, services.settings.batch_poll_s / 2, services.settings.batch_max_wait_s / 4
        )
        # Nothing pooled and no upstream batch due: looked at less often (a job pooled then
        # waits at most this much more, on top of MSGQ_BATCH_MAX_WAIT_S).
        self.idle_tick_s = max(
            self.tick_s, min(LANE_IDLE_S, services.settings.batch_max_wait_s / 4)
        )
        self.idle = False

    @property
    def lock_ttl_ms(self) -> int:
        return int(max(self.services.settings.lock_s * 3, 3.0) * 1000)

    async def run_forever(self) -> None:
        keeper = asyncio.create_task(self._keep_lock())
        try:
            while True:
                await asyncio.sleep(self.idle_tick_s if self.idle else self.tick_s)
                if not self.holding:
                    continue
                try:
                    await self.run_once()
                except RedisError as exc:
                    log.warning("batch.redis_unavailable", error=type(exc).__name__)
                except Exception as exc:  # a bug must not stop the lane for good
                    log.error("batch.manager_crashed", error=f"{type(exc).__name__}: {exc}"[:300])
        finally:
            await cancel_and_wait([keeper])

    async def _keep_lock(self) -> None:
        """Take or renew the lock every third of its life, separately from the work, so a long
        create upload or results read does not let it lapse."""
        while True:
            try:
                self.holding = await self.lock.hold(self.lock_ttl_ms)
            except Exception as exc:  # Redis away (or anything else): not holding, try again
                log.warning("batch.lock_unavailable", error=type(exc).__name__)
                self.holding = False
            await asyncio.sleep(self.lock_ttl_ms / 3000)

    async def run_once(self) -> None:
        """Flush the pool if due, then advance every upstream batch that is due."""
        if not self.sized:  # once a process: jobs pooled before sizes were kept get theirs
            await lanes.backfill_sizes(self.services.redis, self.services.settings.keys)
            self.sized = True
        flush, due, pooled = await self.batcher.due()
        self.idle = not pooled and not due
        if flush:
            batch = await self.batcher.flush()
            if batch is not None:
                await self.batcher.advance(batch)
                due = await self.services.redis.zrangebyscore(
                    self.services.settings.keys.lane_batches, 0, now_ms(), start=0, num=50
                )
        for raw in due:
            batch = await lanes.load_batch(
                self.services.redis, self.services.settings.keys, raw.decode()
            )
            if batch is None:
                await self.services.redis.zrem(self.services.settings.keys.lane_batches, raw)
            elif batch.state == "creating":
                await self.batcher.advance(batch)
            else:
                await self.poller.poll(batch)
            if not self.holding:
                return


async def recover_orphan(store: JobStore, redis: Redis, job_id: str) -> bool:
    """A batch-lane job whose pool entry or upstream batch vanished (an operator's DEL, writes
    lost in a failover): back to the pool while its spec is kept. False: no spec to send."""
    keys = store.keys
    if not await redis.exists(keys.lane_spec_key(job_id)):
        return False
    stored = await store.update(
        job_id,
        lambda r: batch_records.sent_again(r, error=None, refund=False, to_pool=True),
    )
    if stored is None or stored.status.terminal:
        await batch_budget.leave_lane(redis, keys, job_id, "", record=stored)
        return stored is not None
    await lanes.repool(redis, keys, job_id, "", now_ms())
    log.warning("batch.orphan_repooled", job_id=job_id)
    return True
