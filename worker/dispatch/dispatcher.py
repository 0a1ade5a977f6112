"""The fair-share dispatcher: moves admitted jobs from the scheduler's queues into arq's queue.

One runs per fleet (a Redis lock, renewed by its holder and taken over if it dies). For each model
class with waiting work it picks the next job by policy (`fair_share`), reserves its rate-limit
capacity and its tenant's budget, then moves it in one Lua step with a ticket recording what it
reserved (`worker.job.admission` settles or returns it exactly once). Jobs that need only capacity
are admitted as a run, many in one step (`dispatch_admit`); every move wakes idle workers.
- Capacity: whenever a limit is known for the class, configured or learned from the API's
  headers, each job is admitted against the fleet's buckets, so no worker slot ever holds a job
  that only waits for rate-limit capacity, and a late interactive job is admitted as soon as
  capacity allows, whatever the bulk backlog. Before any limit is known, `AdmissionWindow`'s slow
  start bounds the calls in flight. Either way at most the fleet's slots (plus a small window
  ahead) are due in arq's queue: no fixed count caps the fleet.
- The pause and the 429 cool-down hold every admission, ticket or not.
- A job's deadline ends it `expired` while it waits here, budget waits included.
- Queue identity (class, priority, tenant) is data carried by each job, never parsed from a key,
  and an entry or a class that cannot be handled is contained to itself.
- A tenant at its budget waits (`waiting_reason: "budget"`) or its job fails (`budget_exceeded`),
  per its config.
With the scheduler switched off the dispatcher only drains jobs that a producer with it on placed
in its queues, in arrival order, so no job is stranded by a producer's setting.

Counters live in the dispatcher's memory: a failover restarts fairness from zero, never loses
or repeats a job (a job leaves a scheduler queue only by the atomic move).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from msgq.jobs.store import JobStore
from msgq.settings import Settings
from msgq.tenancy.budgets import Budgets, Reservation
from msgq.tenancy.scheduling import (
    PRUNE_BACKLOG,
    Estimate,
    QueueId,
    Waiting,
)
from msgq.tenancy.tenants import Tenants, load_tenants
from schemas import Priority
from worker.dispatch.admit import AdmitRun
from worker.dispatch.budget import BudgetGate
from worker.dispatch.fair_share import FairShare
from worker.dispatch.handoff import Entry, Handoff
from worker.dispatch.intake import Intake
from worker.dispatch.queues import (
    ADMITTED_TTL_S,
    HEADS_PER_QUEUE,
    Head,
    advance,
)
from worker.dispatch.share_cap import ShareCaps, ticket_fields
from worker.dispatch.wakes import DispatcherWake
from worker.dispatch.window import AdmissionWindow
from worker.fleet_lock import FleetLock
from worker.ledger import Capacity
from worker.ratelimit import RateLimiter
from worker.ticket import release_orphans

log = structlog.get_logger("msgq.dispatcher")

ORPHAN_SWEEP_S = 5.0
EXPIRY_EVERY_S = 0.25  # deadlines of waiting jobs are checked this often
FULL_RECHECK_S = 0.02
# A stand-in for an entry that could not be read: only its queue and job ID are used.
_UNKNOWN = Waiting(QueueId("unknown", Priority.DEFAULT, None), Estimate("unknown", 0, 0, 0.0))


class Dispatcher:
    def __init__(
        self, redis: Redis, store: JobStore, settings: Settings, limiter: RateLimiter
    ) -> None:
        self.redis, self.store, self.settings, self.limiter = redis, store, settings, limiter
        self.tenants: Tenants = load_tenants(settings.tenants_file)
        self.budgets = Budgets(redis, settings.keys)
        self.keys = settings.keys
        self.lock = FleetLock(redis, self.keys.dispatcher_lock)
        self.handoff = Handoff(redis, self.keys, ADMITTED_TTL_S)
        self._prune = redis.register_script(PRUNE_BACKLOG)
        self.policy = FairShare(self.tenants, settings.bulk_floor_share)
        self._run = AdmitRun(redis, limiter, self.policy, self.handoff)
        self.window = AdmissionWindow(redis, settings)
        self.intake = Intake(redis, store, settings, self.tenants)
        self._read_by_tenant: dict[str, list[str]] = defaultdict(list)
        self._next_sweep = self._next_expiry = 0.0
        self._known = False  # the last class dispatched had a known limit
        self.budget_gate = BudgetGate(self.store, self.budgets, self.tenants, self.policy)
        self.share_caps = ShareCaps(redis, limiter)
        self.wakes = DispatcherWake(redis, self.keys)
        self._idle = False  # the last tick found no job waiting: the next looks in one read first
        self._room: tuple[int, bool] = (0, False)  # the tick's window read, and limits_known

    # ------------------------------------------------------------------ loop

    async def run_forever(self) -> None:
        listener = asyncio.create_task(self.wakes.listen())
        try:
            while True:
                try:
                    if not await self.take_lock():
                        await asyncio.sleep(1.0)
                        continue
                    self.wakes.taken()  # its flag cleared by the first read: a job placed
                    # after that read wakes another tick
                    wait_s = await self.tick()
                except RedisError as exc:
                    log.warning("dispatcher.redis_unavailable", error=type(exc).__name__)
                    wait_s = 1.0
                except Exception as exc:  # the fleet's only dispatcher must never stop
                    log.error("dispatcher.tick_failed", error=f"{type(exc).__name__}: {exc}"[:300])
                    wait_s = 1.0
                if wait_s > 0:
                    await self.wakes.wait(wait_s)
        finally:
            listener.cancel()

    async def take_lock(self) -> bool:
        return await self.lock.hold(10_000, renew_after_s=2.0)

    async def tick(self) -> float:
        """Dispatch what can be admitted now; returns how long to wait before looking again."""
        if await self._sweep_and_still_idle():
            return 1.0
        inbox, listed, window = await self._first_look()
        if inbox:  # placed into queues the first look may not have listed: listed again
            await self.intake.route_inbox(inbox)
        if self.settings.scheduler:
            room = await self.window.room_from(window, limits_known=self._known)
            self._room = (room, self._known)
            if room <= 0:
                # The fleet's slots are full: look again shortly, without re-reading every
                # queue (a full tick reads and parses each queue's first entries).
                return FULL_RECHECK_S
        by_class = await self._heads(None if inbox else listed)
        if not by_class:
            self._idle = True
            return 1.0
        await self.budget_gate.mark_waits(self._read_by_tenant)
        if not self.settings.scheduler:
            return await self._drain(by_class)
        waits = []
        for cls, queues in by_class.items():
            try:
                waits.append(await self._dispatch_class(cls, queues))
            except RedisError:
                raise
            except Exception as exc:  # one class's failure must not hold up the others
                log.error("dispatcher.class_failed", error=f"{type(exc).__name__}: {exc}"[:300])
                waits.append(1.0)
        return max(0.0, min(waits))

    async def _sweep_and_still_idle(self) -> bool:
        """The periodic sweeps (orphaned reservations, deadlines passed); True when the last
        tick found nothing and nothing came since: one round trip a second for an idle fleet's
        dispatcher."""
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + ORPHAN_SWEEP_S
            await release_orphans(self.redis, self.limiter)
        if self._idle:
            if await self._still_idle():
                return True
        elif now >= self._next_expiry:
            self._next_expiry = now + EXPIRY_EVERY_S
            await self.intake.expire_due()
        self._idle = False
        return False

    async def _first_look(self) -> tuple[list[tuple[bytes, float]], list[str], list[Any]]:
        """A tick's first reads in one round trip (four before): the owed wake's flag cleared,
        raw producers' inbox, the scheduler's listed queues and the window's reads."""
        async with self.redis.pipeline(transaction=False) as pipe:
            cleared = self.wakes.clear_in(pipe)
            self.intake.ask(pipe)
            pipe.smembers(self.keys.sched_backlog)
            if self.settings.scheduler:
                self.window.ask(pipe)
            inbox, queues, *window = (await pipe.execute())[cleared:]
        return inbox, [q.decode() for q in queues], window

    async def _still_idle(self) -> bool:
        """No raw producer's job in the inbox and no scheduler queue listed, read in one round
        trip with whether a waiting job's deadline has passed (then ended, as every tick does)."""
        now_ms = int(time.time() * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            cleared = self.wakes.clear_in(pipe)  # woken: the flag goes in the same trip
            pipe.zcard(self.keys.sched_inbox)
            pipe.scard(self.keys.sched_backlog)
            pipe.zrangebyscore(self.keys.sched_deadlines, "-inf", now_ms, start=0, num=1)
            inbox, backlog, expiring = (await pipe.execute())[cleared:]
        if expiring:
            await self.intake.expire_due()
        return not inbox and not backlog

    async def _drain(self, by_class: dict[str, dict[str, deque[Head]]]) -> float:
        """Scheduler off for this fleet: whatever a producer placed in the scheduler's queues
        goes to arq's queue as it is, oldest first (the workers' limiter paces it)."""
        heads = [h for queues in by_class.values() for q in queues.values() for h in q]
        await self._move_plain(heads)
        return 0.0 if any(h.backlog >= HEADS_PER_QUEUE for h in heads) else 1.0

    # ------------------------------------------------------------------ reading the queues

    async def _heads(self, queues: list[str] | None = None) -> dict[str, dict[str, deque[Head]]]:
        """Per model class, per scheduler queue: its first HEADS_PER_QUEUE jobs, oldest first
        (`queues`: the listed queues, when the tick's first look read them)."""
        if queues is None:
            queues = [q.decode() for q in await self.redis.smembers(self.keys.sched_backlog)]  # type: ignore[misc]
        if not queues:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.zrange(queue, 0, HEADS_PER_QUEUE - 1)
            values = await pipe.execute()
        empty = [q for q, ids in zip(queues, values, strict=True) if not ids]
        if empty:  # unlisted only if still empty: a job may have been placed since the read
            await self._prune(keys=[self.keys.sched_backlog, *empty])
        pairs = [
            (queue, raw_id.decode())
            for queue, ids in zip(queues, values, strict=True)
            for raw_id in ids
        ]
        if not pairs:
            return {}
        raws = await self.redis.hmget(self.keys.sched_est, [job_id for _, job_id in pairs])  # type: ignore[misc]
        found: dict[str, dict[str, deque[Head]]] = defaultdict(dict)
        read = {queue: len(ids) for queue, ids in zip(queues, values, strict=True)}
        unreadable: list[Head] = []
        self._read_by_tenant.clear()
        for (queue, job_id), raw in zip(pairs, raws, strict=True):
            try:
                waiting = Waiting.loads(raw)
            except (ValueError, KeyError, TypeError):
                # No usable entry: the job goes to arq's queue as it is, where the worker
                # validates it and records the outcome. It never blocks the queue it was in.
                unreadable.append(Head(queue, job_id, _UNKNOWN, 0))
                continue
            head = Head(queue, job_id, waiting, read[queue])
            found[head.cls].setdefault(queue, deque()).append(head)
            self._read_by_tenant[head.tenant].append(job_id)
        if unreadable:
            log.warning("dispatcher.unreadable_entries", jobs=[h.job_id for h in unreadable][:10])
            await self._move_plain(unreadable)
        return found

    # ------------------------------------------------------------------ admission

    async def _dispatch_class(self, cls: str, queues: dict[str, deque[Head]]) -> float:
        firsts = [q[0] for q in queues.values()]
        self.policy.forget_idle_credit(cls, firsts)
        gate_s, _, limited = await self.limiter.gate_and_known(firsts[0].estimate.model)
        if gate_s > 0:
            return min(gate_s, 1.0)  # paused or cooling down: nothing is admitted, ticket or not
        self._known = limited
        return await self._admit_in_order(cls, queues, limited)

    async def _admit_in_order(
        self, cls: str, queues: dict[str, deque[Head]], limited: bool
    ) -> float:
        """Admit by policy until the slots are full, capacity runs out or the heads read do."""
        # The room the tick read, for the first class if read as it is sized (else read anew).
        (room, sized_as), self._room = self._room, (0, False)
        room = room if sized_as == limited else 0
        plain: list[Head] = []  # admitted in policy order, moved together (no ticket needed)
        run = self._run  # needing only capacity: admitted together, in one step (dispatch_admit)
        try:
            while queues:
                if room <= 0 or run.full():
                    if (wait := await self._flush(plain)) is not None:
                        return wait
                    room = await self.window.room(limits_known=limited)
                    if room <= 0:
                        return FULL_RECHECK_S  # the fleet's slots are full
                head = self.policy.choose(cls, [q[0] for q in queues.values()])
                if head is None:
                    return await self._flush(plain) or 1.0
                outcome = await self._take(head, limited, plain)
                if isinstance(outcome, float):
                    return outcome  # the class waits for capacity (the head holds its place)
                if outcome:
                    room -= 1
                    self.policy.served(head)
                blocked = self.policy.blocked.get(head.tenant, 0) > time.monotonic()
                if advance(queues, head, blocked=blocked):
                    return await self._flush(plain) or 0.0  # re-read: more may wait, stay fair
            # Every queue was read to its end (a full one returns above): nothing more waited
            # then, and a job placed since has woken the dispatcher (`wake`). An immediate
            # re-read found nothing and ran in the same event loop as the worker's claims.
            return await self._flush(plain) or 1.0
        finally:
            run.discard()  # a run not flushed (an error): its jobs stay queued, uncharged
            await self._move_plain(plain)

    async def _take(self, head: Head, limited: bool, plain: list[Head]) -> bool | float:
        """Admit one head, or add it to the run (or the plain move) to be admitted with others.
        True: taken. False: skipped (its tenant blocked, or it had left). A float: wait."""
        if not self._needs_ticket(head):  # charged now; a run's job not admitted is given back
            if limited:
                self._run.add(head)
            else:
                plain.append(head)
            return True
        if (wait := await self._flush(plain)) is not None:
            return wait  # admitted in order: the run before this head came first
        return await self._admit(head, limited)

    async def _flush(self, plain: list[Head]) -> float | None:
        """Admit the run collected so far, then move the plain jobs; the run's wait, if any."""
        moved, wait = await self._run.flush(int(time.time() * 1000))
        self.window.admitted(moved)
        await self._move_plain(plain)
        return wait

    def _needs_ticket(self, head: Head) -> bool:
        config = self.tenants.get(head.tenant)
        return config.has_budget or bool(config.rpm_share or config.itpm_share or config.otpm_share)

    async def _move_plain(self, heads: list[Head]) -> None:
        """Move jobs that need no reservation into arq's queue, many in one script call."""
        if not heads:
            return
        left = await self.handoff.leave([(head.job_id, head.queue) for head in heads])
        leaving = [Entry(head.job_id) for head, still in zip(heads, left, strict=True) if still]
        entered = await self.handoff.enter(leaving, int(time.time() * 1000))
        self.window.admitted(sum(entered.values()))
        heads.clear()

    async def _admit(self, head: Head, limited: bool) -> bool | float:
        """True: moved. False: skipped (tenant blocked, or the job left). A float: wait."""
        est, now_ms = head.estimate, int(time.time() * 1000)
        count = None
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
            count = admission.count
        share = self.share_caps.capacity(head, self.tenants.get(head.tenant)) if limited else None
        if share is not None:
            capped = await self.share_caps.take(head, share, now_ms)
            if capped is not None:
                await self._refund(head)
                # Looked at again within a second: answers give back what they did not use
                # (the ledger settles the share), so the wait the bucket names is an upper bound.
                self.policy.blocked[head.tenant] = time.monotonic() + min(capped, 1.0)
                return False
        reservation = await self.budget_gate.reserve(head)
        if reservation is False:
            await self._give_back(head, limited, share, None)
            return False
        value = {"estimate": est.dumps().decode(), "limited": limited, **ticket_fields(share)}
        if count is not None:
            value["n"] = count
        if isinstance(reservation, Reservation):
            value |= {"day": reservation.day, "month": reservation.month}
            value["micro_usd"] = reservation.micro_usd
            value["tenant"] = reservation.tenant
        moved = (await self.handoff.leave([(head.job_id, head.queue)]))[0]
        if moved:
            entry = Entry(head.job_id, orjson.dumps(value))
            moved = (await self.handoff.enter([entry], now_ms))[head.job_id]
        if not moved:
            budget = reservation if isinstance(reservation, Reservation) else None
            await self._give_back(head, limited, share, budget)
            return False
        self.window.admitted(1)
        return True

    async def _give_back(
        self, head: Head, limited: bool, share: Capacity | None, budget: Reservation | None
    ) -> None:
        """A job reserved for and then not admitted: everything it took goes back."""
        if limited:
            await self._refund(head)
        await self.share_caps.give_back(share)
        if budget is not None:
            await self.budgets.settle(budget, 0.0, head.estimate.model)

    async def _refund(self, head: Head) -> None:
        est = head.estimate
        await self.limiter.settle(
            est.model, input_delta=est.input_tokens, output_delta=est.output_tokens, requests=1
        )
