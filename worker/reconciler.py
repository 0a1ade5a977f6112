"""The fleet's safety net: one worker at a time (a Redis lock) looks for jobs that can no longer
end on their own, and for batches past their expiry, and ends them truthfully.

An orphan is a record that is not terminal and has neither its queued job nor a live in-progress
lock: nothing will ever run it. Every known cause is fixed, so the expected count is zero; this
exists for the unknown ones (a failover that lost writes, an operator's DEL). A candidate must
look the same on two passes in a row before anything is done, so a record caught between two
steps of a normal transition is never touched.
- job payload present but missing from the queue ZSET: put back in the queue (re-enqueued);
- waiting in a scheduler queue that the backlog does not list (so no dispatcher reads it): the
  queue is listed again at once (msgq.tenancy.scheduling's backlog invariant; listing is always
  safe);
- payload gone: `failed` with `error.type = "lost"` (msgq keeps no copy of the request to
  re-send, and says so rather than pretend);
- a batch-lane job (pooled or upstream: no payload and no lock by design) is an orphan only
  when its pool entry or upstream batch vanished: it is pooled again from its kept spec.

Each pass also takes expired records out of the job indexes (`msgq.jobs.indexes.prune_expired`):
Redis expires a record without telling the indexes that name it, which otherwise only grew.

And it settles the ledgers of lost runs (`msgq.ledger`): a job whose ledger holds reservations
while no worker holds its in-progress lock, on two passes in a row, lost its worker mid-call
(the next run of the job would settle it too; a job that never runs again would hold its
budget for good). It is settled as cut: the call may have reached the API.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from msgq import lanes
from msgq.batches import Batches
from msgq.channels import publish
from msgq.jobs.indexes import prune_expired
from msgq.jobs.records import utcnow
from msgq.jobs.store import JobStore
from msgq.ledger import budget_mismatches
from msgq.script_calls import declare
from msgq.settings import Settings
from msgq.tenancy.budgets import periods
from msgq.tenancy.scheduling import RELIST_BACKLOG
from schemas import JobError, JobErrorType, JobRecord, JobStatus
from worker import transitions
from worker.fleet_lock import FleetLock
from worker.lane import lane as batch_lane
from worker.ledger import CUT, Ledgers
from worker.ratelimit import RateLimiter

log = structlog.get_logger("msgq.reconciler")


@dataclass
class Pass:
    """What one pass found and did (also what tests and RELIABILITY.md report)."""

    scanned: int = 0
    requeued: list[str] = field(default_factory=list)
    relisted: list[str] = field(default_factory=list)  # their scheduler queue listed again
    lost: list[str] = field(default_factory=list)
    expired_batches: list[str] = field(default_factory=list)
    expired_jobs: int = 0
    pruned: int = 0  # expired records taken out of the job indexes
    ledgers_settled: list[str] = field(default_factory=list)  # of runs lost mid-call
    budget_mismatches: list[tuple[str, int, int]] = field(default_factory=list)


class Reconciler:
    def __init__(
        self, redis: Redis, store: JobStore, settings: Settings, ledgers: Ledgers | None = None
    ) -> None:
        self.redis, self.store, self.settings = redis, store, settings
        self.ledgers = ledgers or Ledgers(redis, RateLimiter.from_settings(redis, settings))
        self._unheld: set[str] = set()  # open ledgers with no lock on the last pass
        self._mismatched: set[tuple[str, int, int]] = set()  # on the last pass
        self.batches = Batches(redis, store, settings)
        self.keys = settings.keys
        self.lock = FleetLock(redis, self.keys.reconciler_lock)
        self._relist_backlog = redis.register_script(RELIST_BACKLOG)
        self._suspects: dict[str, bytes] = {}  # job ID -> raw record seen on the last pass

    async def run_forever(self) -> None:
        interval = self.settings.reconcile_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                if await self.take_lock():
                    await self.run_once()
            except RedisError as exc:
                log.warning("reconciler.redis_unavailable", error=type(exc).__name__)
            except Exception as exc:  # a bug must not stop the safety net for good
                log.error("reconciler.pass_failed", error=f"{type(exc).__name__}: {exc}"[:300])

    async def take_lock(self) -> bool:
        ttl_ms = int(self.settings.reconcile_interval_s * 3 * 1000)
        return await self.lock.hold(ttl_ms)

    async def run_once(self) -> Pass:
        done = Pass()
        suspects: dict[str, bytes] = {}
        for part in self.keys.parts:  # each partition lists its own active jobs
            cursor = 0
            while True:
                cursor, members = await self.redis.zscan(part.active_key, cursor, count=500)
                ids = [m.decode() for m, _ in members]
                done.scanned += len(ids)
                suspects |= await self._suspects_in(ids, done)
                if cursor == 0:
                    break
        for job_id, raw in suspects.items():
            if self._suspects.get(job_id) == raw:
                await self._settle(job_id, done)
        self._suspects = {k: v for k, v in suspects.items() if k not in done.lost}
        await self._expire_batches(done)
        await self._settle_lost_ledgers(done)
        await self._check_budgets(done)
        done.pruned = await prune_expired(self.redis, self.keys)
        if (
            done.requeued
            or done.relisted
            or done.lost
            or done.expired_batches
            or done.ledgers_settled
        ):
            log.warning(
                "reconciler.acted",
                requeued=len(done.requeued),
                relisted=len(done.relisted),
                lost=len(done.lost),
                expired_batches=len(done.expired_batches),
                expired_jobs=done.expired_jobs,
                ledgers_settled=len(done.ledgers_settled),
            )
        return done

    async def _check_budgets(self, done: Pass) -> None:
        """A tenant's spend counter against its cost and open reservations (`msgq audit`'s
        check), logged when the same difference is seen on two passes in a row (a job caught
        between reserving and recording is not a finding)."""
        found = set(await budget_mismatches(self.redis, self.keys, periods()[0]))
        done.budget_mismatches = sorted(found & self._mismatched)
        for tenant, counter, expected in done.budget_mismatches:
            log.error(
                "ledger.budget_mismatch",
                tenant=tenant,
                counter_micro_usd=counter,
                expected_micro_usd=expected,
            )
        self._mismatched = found

    async def _settle_lost_ledgers(self, done: Pass) -> None:
        ids = []
        for part in self.keys.parts:  # each partition lists its own open ledgers
            ids += [raw.decode() for raw in await self.redis.zrange(part.ledger_open, 0, 999)]
        if not ids:
            self._unheld = set()
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.exists(self.keys.in_progress_key(job_id))
            locked = await pipe.execute()
        unheld = {job_id for job_id, held in zip(ids, locked, strict=True) if not held}
        for job_id in sorted(unheld & self._unheld):
            raw = await self.redis.get(self.keys.record_key(job_id))
            model = JobRecord.model_validate_json(raw).model if raw else None
            await self.ledgers.settle(job_id, CUT, model=model or "unknown")
            done.ledgers_settled.append(job_id)
        self._unheld = unheld - set(done.ledgers_settled)

    async def _suspects_in(self, ids: list[str], done: Pass) -> dict[str, bytes]:
        if not ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.get(self.keys.record_key(job_id))
                pipe.exists(self.keys.arq_job_key(job_id))
                pipe.exists(self.keys.in_progress_key(job_id))
                pipe.zscore(self.keys.for_job(job_id).queue, job_id)
                pipe.hget(self.keys.sched_where, job_id)
            values = await pipe.execute()
        found: dict[str, bytes] = {}
        stale: list[str] = []
        waiting: list[bytes | str] = []  # (job ID, scheduler queue) pairs, flattened
        for n, job_id in enumerate(ids):
            raw, queued, locked, score, scheduled = values[5 * n : 5 * n + 5]
            if raw is None or JobRecord.model_validate_json(raw).status.terminal:
                stale.append(job_id)  # ended (or gone): only the index entry is left over
                continue
            if scheduled is not None:
                waiting += [job_id, scheduled]
            if not locked and (not queued or (score is None and scheduled is None)):
                found[job_id] = raw
        if waiting:
            await self._relist(waiting, done)
        if found:  # pooled and upstream batch-lane jobs have neither a payload nor a lock
            placed = await lanes.locations(self.redis, self.keys, list(found))
            found = {k: v for (k, v), at in zip(found.items(), placed, strict=True) if at is None}
        for job_id in stale:
            await self.redis.zrem(self.keys.for_job(job_id).active_key, job_id)
        return found

    async def _relist(self, waiting: list[bytes | str], done: Pass) -> None:
        """List again the scheduler queues that hold a job but that no dispatcher reads."""
        keys: list[Any] = [self.keys.sched_backlog]
        args = [w if n % 2 == 0 else declare(keys, w) for n, w in enumerate(waiting)]
        relisted = await self._relist_backlog(keys=keys, args=args)
        for raw_id in relisted:
            done.relisted.append(raw_id.decode())
            log.warning("reconciler.relisted", job_id=raw_id.decode())

    async def _settle(self, job_id: str, done: Pass) -> None:
        if await self.redis.exists(self.keys.in_progress_key(job_id)):
            return
        if (await lanes.locations(self.redis, self.keys, [job_id]))[0] is not None:
            return  # the batch lane holds it (its pool, or an upstream batch)
        payload = await self.redis.exists(self.keys.arq_job_key(job_id))
        if payload and await self.redis.hexists(self.keys.sched_where, job_id):  # type: ignore[misc]
            return  # waiting in the scheduler: the dispatcher will move it
        if payload:  # queued (its partition), then the wake (the fleet's slot): two slots
            async with self.redis.pipeline(transaction=False) as pipe:
                due_ms = int(utcnow().timestamp() * 1000)
                pipe.zadd(self.keys.for_job(job_id).queue, {job_id: due_ms})
                publish(pipe, self.keys, self.keys.queue_wake, job_id)  # idle workers look now
                await pipe.execute()
            done.requeued.append(job_id)
            log.warning("reconciler.requeued", job_id=job_id)
            return
        if await batch_lane.recover_orphan(self.store, self.redis, job_id):
            done.requeued.append(job_id)  # a batch-lane job with its spec: pooled again
            return
        error = JobError(
            type=JobErrorType.LOST,
            message="the job's queued payload is gone (deleted outside msgq, or lost with a "
            "Redis primary); msgq keeps no copy of the request, so it cannot be sent again",
        )
        stored = await transitions.finish(self.store, job_id, JobStatus.FAILED, error=error)
        await self.store.unqueue(job_id)
        if stored is not None and stored.status is JobStatus.FAILED and stored.error == error:
            done.lost.append(job_id)
            log.error("reconciler.lost", job_id=job_id, attempts=stored.attempts)

    async def _expire_batches(self, done: Pass) -> None:
        for batch_id in await self.batches.overdue(utcnow()):
            done.expired_jobs += await self.batches.expire(batch_id)
            done.expired_batches.append(batch_id)
