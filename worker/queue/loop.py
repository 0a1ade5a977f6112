"""`MsgqWorker`: arq's worker loop with its per-job Redis work cut to what a job needs."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import structlog
from arq import Retry, Worker
from arq.jobs import SerializationError, deserialize_job_raw
from arq.utils import ms_to_datetime, timestamp_ms
from arq.worker import JobExecutionFailed, RetryJob
from redis.exceptions import RedisError

from msgq.cancel import cancel_and_wait
from msgq.channels import publish
from msgq.keys import Keyspace
from worker.queue import poll
from worker.queue.claim import (
    CLAIM,
    Claim,
    ClaimReplicas,
    QueueJob,
    _claim,
    cancel_requested,
    claim_keys,
    prefetch_ops,
    send_claims,
)
from worker.queue.hooks import Hooks
from worker.queue.upkeep import (
    SETTLE_AFTER_OUTAGE_S,
    ByteBudget,
    Outage,
    keep_locks_alive,
    refusal,
    wait_for_redis,
)
from worker.queue.wake import QueueWake

log = structlog.get_logger("msgq.worker")


class MsgqWorker(Worker):
    """arq's Worker, with its per-job Redis work cut to what a job needs.

    - Pick-up is one script for every free slot: claim (only if it is due and no other worker
      holds it; a claim re-sent after its reply was lost gets its job back), read the payload,
      count the try, take a pending abort (the job is then refused, as arq does), and read the
      caller's prefetch keys (msgq's record and admission ticket), where arq takes six round
      trips a job.
    - A job whose terminal record already ended it in the queue (`RunningJob.queue_done`) skips
      arq's finishing transaction.
    - One heartbeat for all running jobs keeps their short in-progress locks alive.
    - One round trip per poll (due jobs and abort requests), polls when woken by work
      (`wake`), and a poll loop that rides out a Redis outage instead of exiting.
    arq's job timeout and result keeping are not implemented here: msgq sets neither
    (`UNREACHABLE_TIMEOUT_S`, `keep_result=0`); its task bounds itself and its records hold results.
    """

    def __init__(
        self,
        *args: Any,
        lock_s: float,
        hooks: Hooks,
        keys: Keyspace,
        max_inflight_bytes: int = 2**62,
        claim_replicas: ClaimReplicas | None = None,
        reconnect_settle_s: float = SETTLE_AFTER_OUTAGE_S,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, queue_name=keys.queue, **kwargs)
        # Every key this worker touches is the deployment's (arq's own constants are never used:
        # two deployments on one Redis must not share a job's payload, lock or abort set).
        self.keys = keys
        self.in_progress_timeout_s = lock_s
        self._outage = Outage(reconnect_settle_s)
        self._hooks = hooks
        self._prefetch = hooks.prefetch
        self._prefetch_ops = prefetch_ops(hooks.prefetch)
        # Its in-progress locks' value: a claim re-sent after its reply was lost finds its own
        # lock and gets the job again instead of leaving it locked for `lock_s`.
        self._token = uuid.uuid4().hex
        self._claim: Any = None  # registered on the pool once arq has made it
        self._claim_replicas = claim_replicas
        self._beat: asyncio.Task[None] | None = None
        self._claimed = 0  # jobs this worker has claimed and started
        self._polls = 0  # which partition a poll takes first (worker.queue.poll.read)
        self.bytes = ByteBudget(max_inflight_bytes, self.max_jobs)
        self.ctx["running_jobs"] = lambda: self.job_counter
        # arq sleeps `poll_delay_s` between polls; here the wait is `idle`, which a wake ends.
        self._idle_s, self.poll_delay_s = self.poll_delay_s, 0.0
        self._idle, self._more_due = self._idle_s, False  # poll on a job's end: see _job_done
        self._wake: QueueWake | None = None

    async def _poll_iteration(self) -> None:
        if self._wake is None:
            self._wake = QueueWake(self.pool, self.keys, lambda: self.job_counter < self.max_jobs)
        try:
            if self._outage.began is not None:
                # Redis answers again, or this raises: this worker's lapsed locks taken back.
                running, lock_s = list(self.job_tasks), self.in_progress_timeout_s
                await self._outage.ended(self.pool, self.keys, running, lock_s, self._token)
            self._wake.before_poll()
            while await self._poll_once():  # it started jobs, so more may be due: look again
                self._wake.before_poll()
        except (RedisError, OSError) as exc:
            # redis-py reconnects on the next command; wait with backoff, then poll again.
            retry_in_s = self._outage.failed()
            # Drop the idle (stale) connections at once; in-use ones belong to running jobs, and
            # closing them underneath a pending read could leave it waiting forever.
            await self.pool.connection_pool.disconnect(inuse_connections=False)
            log.warning(
                "worker.redis_unavailable",
                error=type(exc).__name__,
                detail=str(exc)[:200],
                retry_in_s=retry_in_s,
            )
            await asyncio.sleep(retry_in_s)
            return
        await self._wake.idle(self._idle)

    async def _poll_once(self) -> bool:
        """arq's poll iteration, with its two reads (due jobs, abort requests) in one round trip.
        True when it started a job. The due jobs read are waiting ones (a running job is scored
        at its lock's expiry), as many as this worker has free slots: arq read its
        `queue_read_limit` oldest entries, running ones included, so a fleet running that many
        jobs started no more."""
        count = min(self.max_jobs - self.job_counter, self.bytes.room(self.job_counter))
        if self.burst and self.max_burst_jobs >= 0:
            count = min(count, self.max_burst_jobs - self._jobs_started())
        picking = self.allow_pick_jobs and count > 0
        now = timestamp_ms()
        async with self.pool.pipeline(transaction=False) as pipe:
            # Abort requests matter only to running jobs; idle, they are pruned once a minute.
            reads = {"aborts": bool(self.tasks), "prune": bool(self.tasks) or self._polls % 60 == 0}
            poll.ask(pipe, self.keys, count, now, picking=picking, **reads)
            replies = await pipe.execute()
        polled = poll.read(replies, self.keys, count, now, self._polls, picking=picking, **reads)
        self._polls += 1
        started = self._claimed
        self._idle = self._idle_s  # no job due later: until a wake, or the poll delay
        self._more_due = not picking  # could not look (no room): look when a job ends
        if picking:
            self._more_due = len(polled.ready) >= count  # as many as it had slots: maybe more
            if polled.later is not None:  # a retry or deferred job: poll when it comes due
                self._idle = min(self._idle_s, max(0.0, (polled.later - now) / 1000))
            await self.start_jobs(polled.ready)
        await self._abort(polled.aborts)
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # run_job's own errors surface here, as in arq
        await self.heart_beat()
        return self._claimed > started

    async def _abort(self, requested: list[bytes]) -> None:
        """Cancel the running tasks of jobs whose abort was asked for (arq's semantics)."""
        aborted = cancel_requested(self.job_tasks, requested)
        if aborted:
            self.aborting_tasks.update(aborted)
            for job_id in aborted:
                await self.pool.zrem(self.keys.for_job(job_id).abort_key, job_id)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Claim and start each due job. The slot (arq's semaphore and counter) is given back
        whenever the job is not started, Redis failing mid-pick-up included: arq's own loop
        kept it for good then, one slot fewer per outage."""
        if self._beat is None:
            self._beat = self.loop.create_task(self._heartbeat())
        # A job stays in the queue until it ends: the ones running here need no claim.
        pending = [i.decode() for i in job_ids if i.decode() not in self.tasks]
        while pending:
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            # Every slot free right now is filled by one claim: claiming one job per round trip
            # kept a busy worker at a few jobs in flight, whatever its concurrency.
            slots = 1
            while slots < len(pending) and self.job_counter + slots < self.max_jobs:
                if self.sem.locked():
                    break
                await self.sem.acquire()  # free: returns at once
                slots += 1
            self.job_counter += slots
            batch, pending = pending[:slots], pending[slots:]
            try:
                claims = await self._claim_jobs(batch)
            except BaseException:  # Redis failing, or the worker stopping, mid-claim
                for _ in batch:
                    self._give_back_slot()
                raise
            for job_id, claim in zip(batch, claims, strict=True):
                if claim is None:  # running elsewhere, finished, or re-deferred elsewhere
                    self._give_back_slot()
                    continue
                self._claimed += 1
                task = self.loop.create_task(self.run_job(job_id, claim))
                task.add_done_callback(self._job_done)
                self.tasks[job_id] = task

    async def _claim_jobs(self, job_ids: list[str]) -> list[Claim | None]:
        if self._claim is None:
            self._claim = self.pool.register_script(CLAIM)
        head = [timestamp_ms(), int(self.in_progress_timeout_s * 1000), self._token]
        head += [len(self._prefetch_ops), *self._prefetch_ops]
        groups = list(poll.by_partition(self.keys, job_ids).values())  # a claim a partition
        calls = [(claim_keys(self.keys, g, self._prefetch), [*head, *g]) for g in groups]
        replies, fleet = await send_claims(
            self.pool, self._claim, calls, self._hooks.fleet_reads, self._claim_replicas
        )
        claims: dict[str, Claim | None] = {}
        for group, reply in zip(groups, replies, strict=True):
            claims |= {i: _claim(r, fleet) for i, r in zip(group, reply, strict=True)}
        return [claims[job_id] for job_id in job_ids]

    def _job_done(self, _: object) -> None:
        """A slot is free: poll now if work may wait (a wake came while full, the last poll
        filled every slot or could not look, a job went back to the queue); else a wake will."""
        self._release_sem_dec_counter_on_complete()
        if self._wake is not None and (self._wake.missed or self._more_due):
            self._wake.missed = self._more_due = False
            self._wake.poke()

    def _give_back_slot(self) -> None:
        self.job_counter -= 1
        self.sem.release()

    async def run_job(self, job_id: str, claim: Claim) -> None:  # type: ignore[override]
        """arq's bookkeeping around a job (pick-up, finish) can hit a Redis outage. Left as a
        task exception it would be re-raised later, once per poll and again at shutdown; the
        job itself is safe: still queued, its lock lapses, and the rerun sees its record."""
        size = len(claim.payload or b"")
        if self.bytes.add(size) and self._wake is not None:
            self._wake.poke()  # the first payload seen sizes the room: the next poll can fill it
        try:
            await self._run_claimed(job_id, claim)
        except (RedisError, OSError) as exc:
            log.warning("job.bookkeeping_failed", job_id=job_id, error=type(exc).__name__)
        except Exception as exc:  # never the worker's end, and the job must still end
            log.error("job.bookkeeping_crashed", job_id=job_id, error=repr(exc)[:300])
            # Left locked, the claim would hand it straight back here, failing again for good:
            # the job ends `failed` (validation_error, the reason) and its keys are released.
            failure = JobExecutionFailed(f"the job could not be started: {exc!r}"[:300])
            with contextlib.suppress(Exception):
                await self._refuse(job_id, claim, failure)
        finally:
            self.bytes.remove(size)

    async def _run_claimed(self, job_id: str, claim: Claim) -> None:
        """arq's run_job from the claim onwards, for msgq's one task."""
        if claim.error is not None:
            failure = JobExecutionFailed(f"the job's keys could not be read: {claim.error}")
            return await self._refuse(job_id, claim, failure)
        if claim.payload is None:
            return await self._refuse(job_id, claim, JobExecutionFailed("job expired"))
        try:
            name, _args, kwargs, enqueued_try, enqueued_ms = deserialize_job_raw(
                claim.payload, deserializer=self.job_deserializer
            )
        except SerializationError as exc:
            return await self._refuse(job_id, claim, exc)
        if claim.aborted:
            return await self._refuse(job_id, claim, asyncio.CancelledError(), name, enqueued_ms)
        if name not in self.functions:
            failure = JobExecutionFailed(f"function {name!r} not found")
            return await self._refuse(job_id, claim, failure, name, enqueued_ms)
        job_try = claim.job_try
        if enqueued_try and enqueued_try > job_try:
            job_try = enqueued_try
            await self.pool.setex(self.keys.retry_key(job_id), 88400, str(job_try))
        job = QueueJob(
            job_id,
            self.keys,
            tuple(claim.prefetched),
            enqueued_at=ms_to_datetime(enqueued_ms),
            job_try=job_try,
        )
        finish, due_ms = await self._run_task(job, kwargs)
        if job.ended_in_queue:
            return  # its terminal record's write ended it in the queue too
        await asyncio.shield(self.finish_job(job_id, finish, None, 0, False, due_ms, None))

    async def _run_task(self, job: QueueJob, kwargs: dict[str, Any]) -> tuple[bool, int | None]:
        """Run the task; (finished, ms when due again when deferred) for `finish_job`."""
        job_id = job.job_id
        task = self.loop.create_task(self._hooks.run(self.ctx, job, kwargs))
        self.job_tasks[job_id] = task
        try:
            await task
        except (Exception, asyncio.CancelledError) as exc:
            if isinstance(exc, Retry):
                self.jobs_retried += 1
                return False, timestamp_ms() + (exc.defer_score or 0)
            if job_id in self.aborting_tasks and isinstance(exc, asyncio.CancelledError):
                self.aborting_tasks.remove(job_id)
                self.jobs_failed += 1
                return True, None
            if isinstance(exc, asyncio.CancelledError | RetryJob):
                self.jobs_retried += 1  # a shutdown: the job runs again elsewhere
                return False, None
            log.error("job.task_raised", job_id=job_id, error=type(exc).__name__, exc_info=exc)
            self.jobs_failed += 1
            return True, None
        finally:
            del self.job_tasks[job_id]
        self.jobs_complete += 1
        return True, None

    async def _refuse(
        self,
        job_id: str,
        claim: Claim,
        failure: BaseException,
        name: str = "<unknown>",
        enqueued_ms: int = 0,
    ) -> None:
        """A job that cannot run (payload gone or unreadable, aborted before it started): arq's
        failed-job bookkeeping, then msgq records why."""
        self.jobs_failed += 1
        result = refusal(job_id, claim, failure, name, enqueued_ms, self.queue_name)
        job = QueueJob(job_id, self.keys, tuple(claim.prefetched), job_try=claim.job_try)
        await asyncio.shield(self._finish_refused(job, result))

    async def _finish_refused(self, job: QueueJob, result_data: bytes | None) -> None:
        """arq failed a job before our task ran (empty payload, "expired", aborted): its keys
        go (arq's failed-job bookkeeping, on this deployment's keys; no result is kept), and
        msgq records it too, or a poller would wait on `queued` forever."""
        await self._end_in_queue(job)
        await self._hooks.refused(self.ctx, job, result_data)

    async def _end_in_queue(self, job: QueueJob) -> None:
        async with self.pool.pipeline(transaction=True) as tr:
            for command in job.finish_commands():
                tr.execute_command(*command)
            await tr.execute()

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        """arq's own calls (none on msgq's path, which refuses through `_refuse`)."""
        await self._finish_refused(QueueJob(job_id, self.keys), result_data)

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        """arq's finish on this deployment's keys (no result key). `incr_score` here is the
        ms the job is due again (`_run_task`), not arq's increment: a running job is scored at
        its lock's expiry (CLAIM), so an increment would add the lock's length to every
        deferral. None: due now (handed back). Re-scored only if still queued (XX: a terminal
        record may have taken it out)."""
        if finish:
            return await self._end_in_queue(QueueJob(job_id, self.keys))
        self._more_due = True  # back in the queue (deferred, handed back): its end polls
        due_ms = incr_score or timestamp_ms()
        async with self.pool.pipeline(transaction=True) as tr:  # the job's partition
            tr.zadd(self.keys.for_job(job_id).queue, {job_id: due_ms}, xx=True)
            if keep_in_progress is None:
                tr.delete(self.keys.in_progress_key(job_id))
            else:
                tr.pexpire(self.keys.in_progress_key(job_id), int(keep_in_progress * 1000))
            await tr.execute()
        if keep_in_progress is None and due_ms <= timestamp_ms():  # due now (a hand-off at
            await publish(self.pool, self.keys, self.keys.queue_wake, job_id)  # shutdown, a retry)
        return None

    async def _heartbeat(self) -> None:
        await keep_locks_alive(
            self.pool, self.keys, self.job_tasks, self.in_progress_timeout_s, self._token
        )

    async def main(self) -> None:
        await wait_for_redis(self.pool)
        await super().main()

    async def close(self) -> None:
        if self._wake is not None:
            await self._wake.aclose()
        if self._beat is not None:
            await cancel_and_wait([self._beat])
        await super().close()
