"""The fair-share dispatcher: moves admitted jobs from the scheduler's queues into arq's queue.

One runs per fleet (a Redis lock, renewed by its holder and taken over if it dies). For each model
class with waiting work it picks the next job by policy, reserves its rate-limit capacity and its
tenant's budget, then moves it in one Lua step:
- priority: interactive before default before bulk; a lower priority that is backlogged earns
  `bulk_floor_share` of the tokens admitted above it as credit, and is served when its credit
  covers its next job, so nothing starves;
- tenants: within a priority, virtual token counters (VTC, arXiv 2401.00588): the backlogged
  tenant with the least weighted service goes next, and a tenant that returns from idle starts at
  the current minimum (no banked credit);
- the head of the chosen queue waits for capacity (its reservation holds the bucket), so a large
  request is never starved by small ones;
- a tenant with share caps is admitted against its own scaled buckets as well; a tenant at its
  budget waits (`waiting_reason: "budget"`) or its job fails (`budget_exceeded`), per its config.
Without configured rate limits it admits in priority and VTC order but only keeps
`dispatch_window` jobs ready in arq's queue, and the workers' limiter (which learns limits from
the API's headers) paces the calls.

Counters live in the dispatcher's memory: a failover restarts fairness from zero, never loses
or repeats a job (a job leaves a scheduler queue only by the atomic move).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict, deque
from typing import Any

import orjson
import structlog
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from msgq.arq_format import deserialize
from msgq.jobs.store import JobStore
from msgq.keys import (
    DISPATCHER_LOCK,
    SCHED_BACKLOG,
    SCHED_EST,
    SCHED_INBOX,
    SCHED_WAKE,
    SCHED_WHERE,
    admitted_key,
    arq_job_key,
)
from msgq.settings import Settings
from msgq.tenancy.budgets import Budgets, Reservation
from msgq.tenancy.scheduling import (
    PRUNE_BACKLOG,
    Estimate,
    Placement,
    placement,
    resolve_priority,
    uses_scheduler,
)
from msgq.tenancy.tenants import Tenants, load_tenants
from schemas import JobError, JobRecord, JobSpec, JobStatus, Priority, validate_request
from worker import transitions
from worker.dispatch_queues import (
    ADMITTED_TTL_S,
    HEADS_PER_QUEUE,
    MOVE,
    MOVE_MANY,
    QUEUE,
    Head,
    advance,
)
from worker.fair_share import FairShare
from worker.fleet_lock import FleetLock
from worker.ratelimit import Limits, RateLimiter

log = structlog.get_logger("msgq.dispatcher")


class Dispatcher:
    def __init__(
        self, redis: Redis, store: JobStore, settings: Settings, limiter: RateLimiter
    ) -> None:
        self.redis, self.store, self.settings, self.limiter = redis, store, settings, limiter
        self.tenants: Tenants = load_tenants(settings.tenants_file)
        self.budgets = Budgets(redis)
        self.lock = FleetLock(redis, DISPATCHER_LOCK)
        self._move = redis.register_script(MOVE)
        self._move_many = redis.register_script(MOVE_MANY)
        self._prune = redis.register_script(PRUNE_BACKLOG)
        self.policy = FairShare(self.tenants, settings.bulk_floor_share)
        self._tenant_limiters: dict[str, RateLimiter] = {}
        self.wake = asyncio.Event()

    # ------------------------------------------------------------------ loop

    async def run_forever(self) -> None:
        listener = asyncio.create_task(self._listen())
        try:
            while True:
                try:
                    if not await self.take_lock():
                        await asyncio.sleep(1.0)
                        continue
                    self.wake.clear()  # before reading: a job placed during the tick wakes us
                    wait_s = await self.tick()
                except RedisError as exc:
                    log.warning("dispatcher.redis_unavailable", error=type(exc).__name__)
                    wait_s = 1.0
                except Exception as exc:  # the fleet's only dispatcher must never stop
                    log.error("dispatcher.tick_failed", error=f"{type(exc).__name__}: {exc}"[:300])
                    wait_s = 1.0
                if wait_s > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), wait_s)
        finally:
            listener.cancel()

    async def _listen(self) -> None:
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(SCHED_WAKE)
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self.wake.set()
            except Exception as exc:  # without wake-ups the dispatcher still polls each second
                log.warning("dispatcher.wake_unavailable", error=type(exc).__name__)
                await asyncio.sleep(1.0)

    async def take_lock(self) -> bool:
        return await self.lock.hold(10_000)

    async def tick(self) -> float:
        """Dispatch what can be admitted now; returns how long to wait before looking again."""
        await self.route_inbox()
        by_class = await self._heads()
        if not by_class:
            return 1.0
        waits = [await self._dispatch_class(cls, queues) for cls, queues in by_class.items()]
        return max(0.0, min(waits))

    # ------------------------------------------------------------------ raw producers

    async def route_inbox(self, limit: int = 500) -> int:
        """Place jobs raw-Redis producers added to `msgq:sched:inbox` (payload under the usual
        `arq:job:<id>`) into their scheduler queue; an unreadable one goes to arq's queue, where
        the worker records why it failed."""
        entries = await self.redis.zrange(SCHED_INBOX, 0, limit - 1, withscores=True)
        for raw_id, score in entries:
            job_id = raw_id.decode()
            payload = await self.redis.get(arq_job_key(job_id))
            placed = None if payload is None else self._placement_of(payload)
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(SCHED_INBOX, job_id)
                if placed is not None:
                    placed.write(pipe, job_id, int(score))
                elif payload is not None:
                    pipe.zadd(self.settings.queue_name, {job_id: int(score)})
                await pipe.execute()
        return len(entries)

    def _placement_of(self, payload: bytes) -> Placement | None:
        job = deserialize(payload, max_bytes=self.settings.max_job_bytes)
        try:
            spec = JobSpec.model_validate(job.get("k") or {})
            request = validate_request(spec.request, max_image_bytes=self.settings.max_image_bytes)
        except ValidationError:
            return None
        if not uses_scheduler(self.settings, spec.lane):
            return None
        priority = resolve_priority(spec.priority, spec.tenant, self.tenants)
        return placement(request, priority, spec.tenant, self.settings)

    # ------------------------------------------------------------------ reading the queues

    async def _heads(self) -> dict[str, dict[str, deque[Head]]]:
        """Per model class, per scheduler queue: its first HEADS_PER_QUEUE jobs, oldest first."""
        queues = [q.decode() for q in await self.redis.smembers(SCHED_BACKLOG)]  # type: ignore[misc]
        if not queues:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.zrange(queue, 0, HEADS_PER_QUEUE - 1)
            values = await pipe.execute()
        empty = [q for q, ids in zip(queues, values, strict=True) if not ids]
        if empty:  # unlisted only if still empty: a job may have been placed since the read
            await self._prune(keys=[SCHED_BACKLOG, *empty])
        pairs = [
            (queue, raw_id.decode())
            for queue, ids in zip(queues, values, strict=True)
            for raw_id in ids
        ]
        if not pairs:
            return {}
        raws = await self.redis.hmget(SCHED_EST, [job_id for _, job_id in pairs])  # type: ignore[misc]
        found: dict[str, dict[str, deque[Head]]] = defaultdict(dict)
        read = {queue: len(ids) for queue, ids in zip(queues, values, strict=True)}
        for (queue, job_id), raw in zip(pairs, raws, strict=True):
            match = QUEUE.match(queue)
            if match is None or raw is None:
                await self.redis.zrem(queue, job_id)  # unreadable entry: the reconciler decides
                continue
            head = Head(
                queue,
                match["cls"],
                Priority(match["prio"]),
                match["tenant"],
                job_id,
                Estimate.loads(raw),
                read[queue],
            )
            found[head.cls].setdefault(queue, deque()).append(head)
        return found

    # ------------------------------------------------------------------ admission

    async def _dispatch_class(self, cls: str, queues: dict[str, deque[Head]]) -> float:
        firsts = [q[0] for q in queues.values()]
        self.policy.forget_idle_credit(cls, firsts)
        limited = self._limited(cls)
        room = 0
        plain: list[Head] = []  # admitted in policy order, moved together (no ticket needed)
        try:
            while queues:
                if room <= 0:
                    await self._move_plain(plain)
                    room = await self._room()
                    if room <= 0:
                        return 0.02  # arq's queue holds enough ready work; look again shortly
                head = self.policy.choose(cls, [q[0] for q in queues.values()])
                if head is None:
                    return 1.0
                if not limited and not self._needs_ticket(head):
                    plain.append(head)
                    outcome: bool | float = True
                else:
                    outcome = await self._admit(head, limited)
                if isinstance(outcome, float):
                    return outcome  # the class waits for capacity (the head holds its place)
                if outcome:
                    room -= 1
                    self.policy.served(head)
                blocked = self.policy.blocked.get(head.tenant, 0) > time.monotonic()
                if advance(queues, head, blocked=blocked):
                    return 0.0  # a queue may hold more than was read: read again, stay fair
            return 0.0  # re-read the queues: more may be waiting behind the heads read
        finally:
            await self._move_plain(plain)

    def _needs_ticket(self, head: Head) -> bool:
        config = self.tenants.get(head.tenant)
        return config.has_budget or bool(config.rpm_share or config.itpm_share or config.otpm_share)

    async def _move_plain(self, heads: list[Head]) -> None:
        """Move jobs that need no reservation into arq's queue, many in one script call."""
        if not heads:
            return
        args: list[Any] = [int(time.time() * 1000)]
        for head in heads:
            args += [head.job_id, head.queue, arq_job_key(head.job_id)]
        await self._move_many(keys=[self.settings.queue_name, SCHED_WHERE, SCHED_EST], args=args)
        heads.clear()

    async def _room(self) -> int:
        """How many more jobs arq's queue may take: `dispatch_window` minus those ready now.
        Admitted work is picked up at once by idle workers; the window only bounds how far
        admission runs ahead of a saturated fleet (so a late interactive job is not behind it)."""
        ready = await self.redis.zcount(self.settings.queue_name, "-inf", int(time.time() * 1000))
        return self.settings.dispatch_window - int(ready)

    def _limited(self, cls: str) -> bool:
        """Admission happens here only for configured limits. Limits merely learned from
        headers are unknown until the first answers, and a dispatcher admitting at full speed
        would overrun them while it learns: those stay with the workers' limiter, as before."""
        lim = self.limiter.limits.get(cls) or self.limiter.limits.get("default") or Limits()
        return bool(lim.rpm or lim.itpm or lim.otpm)

    async def _admit(self, head: Head, limited: bool) -> bool | float:
        """True: moved. False: skipped (tenant blocked, or the job left). A float: wait."""
        est, now_ms = head.estimate, int(time.time() * 1000)
        if limited:
            admission = await self.limiter.acquire(
                est.model,
                input_tokens=est.input_tokens,
                output_tokens=est.output_tokens,
                now_ms=now_ms,
                holder=head.job_id,
            )
            if not admission.admitted:
                return min(admission.wait_s, 1.0)
            capped = await self._tenant_cap(head, now_ms)
            if capped is not None:
                await self._refund(head)
                self.policy.blocked[head.tenant] = time.monotonic() + capped
                return False
        reservation = await self._reserve_budget(head)
        if reservation is False:
            if limited:
                await self._refund(head)
            return False
        value = {"estimate": est.dumps().decode(), "limited": limited}
        if isinstance(reservation, Reservation):
            value |= {"day": reservation.day, "month": reservation.month}
            value["micro_usd"] = reservation.micro_usd
            value["tenant"] = reservation.tenant
        moved = await self._move(
            keys=[
                head.queue,
                self.settings.queue_name,
                SCHED_WHERE,
                SCHED_EST,
                admitted_key(head.job_id),
                arq_job_key(head.job_id),
            ],
            args=[head.job_id, now_ms, orjson.dumps(value), ADMITTED_TTL_S],
        )
        if not int(moved):
            if limited:
                await self._refund(head)
            if isinstance(reservation, Reservation):
                await self.budgets.settle(reservation, 0.0, est.model)
            return False
        return True

    async def _tenant_cap(self, head: Head, now_ms: int) -> float | None:
        """Seconds to hold the tenant back when its share cap is reached; None when it fits."""
        config = self.tenants.get(head.tenant)
        if not (config.rpm_share or config.itpm_share or config.otpm_share):
            return None
        lim = self.limiter.limits.get(head.cls) or self.limiter.limits.get("default") or Limits()
        scaled = Limits(
            rpm=int(lim.rpm * (config.rpm_share or 1)),
            itpm=int(lim.itpm * (config.itpm_share or 1)),
            otpm=int(lim.otpm * (config.otpm_share or 1)),
        )
        limiter = self._tenant_limiters.get(head.tenant)
        if limiter is None or limiter.limits.get(head.cls) != scaled:
            limiter = RateLimiter(self.redis, {head.cls: scaled}, scope=f"tenant:{head.tenant}")
            self._tenant_limiters[head.tenant] = limiter
        est = head.estimate
        admission = await limiter.acquire(
            est.model,
            input_tokens=est.input_tokens,
            output_tokens=est.output_tokens,
            now_ms=now_ms,
            holder=head.job_id,
        )
        return None if admission.admitted else admission.wait_s

    async def _refund(self, head: Head) -> None:
        est = head.estimate
        await self.limiter.settle(
            est.model, input_delta=est.input_tokens, output_delta=est.output_tokens, requests=1
        )

    async def _reserve_budget(self, head: Head) -> Reservation | bool | None:
        """None: no budget. A Reservation. False: at the budget (waiting, or failed)."""
        config = self.tenants.get(head.tenant)
        if not config.has_budget:
            return None
        outcome = await self.budgets.reserve(head.tenant, config, head.estimate.usd)
        if isinstance(outcome, Reservation):
            return outcome
        if config.on_budget == "fail":
            await self._fail_over_budget(head, outcome)
        else:
            await self._wait_for_budget(head, outcome)
        return False

    async def _fail_over_budget(self, head: Head, period: str) -> None:
        error = JobError(
            type="budget_exceeded",
            message=f"tenant {head.tenant!r} has reached its {period} budget",
        )
        stored = await transitions.finish(self.store, head.job_id, JobStatus.FAILED, error=error)
        if stored is not None:
            await self.store.unqueue(head.job_id)

    async def _wait_for_budget(self, head: Head, period: str) -> None:
        """Until the period rolls over (checked again each minute): mark the tenant's jobs."""
        self.policy.blocked[head.tenant] = time.monotonic() + 60
        members = await self.redis.smembers(SCHED_BACKLOG)  # type: ignore[misc]
        queues = [q.decode() for q in members]
        for queue in (q for q in queues if _tenant_of(q) == head.tenant):
            for raw_id in await self.redis.zrange(queue, 0, -1):
                await self.store.update(raw_id.decode(), _waiting_for_budget)
        log.info("dispatcher.budget_wait", tenant=head.tenant, period=period)


def _tenant_of(queue: str) -> str | None:
    match = QUEUE.match(queue)
    return None if match is None else match["tenant"]


def _waiting_for_budget(record: JobRecord) -> JobRecord | None:
    if record.waiting_reason == "budget":
        return None
    return record.model_copy(update={"waiting_reason": "budget"})
