"""The job records in Redis: created once, updated under WATCH, written terminal only once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from msgq import arq_format
from msgq.channels import publish
from msgq.fleet_stats import record_minute
from msgq.group_commit import GroupCommit
from msgq.jobs import listing, records
from msgq.jobs.indexes import index_expiry, index_new, index_status
from msgq.jobs.kept import keep_spec_from_queue
from msgq.jobs.records import utcnow
from msgq.jobs.store_scripts import COMPARE_AND_SET, CREATE, SCRIPT_SAFE, Recorder, flatten
from msgq.keys import Keyspace
from msgq.settings import Settings
from msgq.tenancy.scheduling import Placement
from msgq.watched import Writes, watched
from msgq.webhooks import outbox
from schemas import JobRecord, JobStatus, Lane

BATCH_RETENTION_S = 29 * 24 * 3600  # the Batches API keeps results 29 days after creation

Change = Callable[[JobRecord], JobRecord | None]


class JobStore:
    """All record reads and writes. A terminal record is never overwritten: late duplicates lose."""

    def __init__(
        self,
        redis: Redis,
        *,
        keys: Keyspace,
        retention_s: int,
        batch_retention_s: int = BATCH_RETENTION_S,
    ) -> None:
        self.redis = redis
        self.keys = keys  # the deployment's key names: every key below is built from them
        self.retention_s = retention_s
        self.batch_retention_s = batch_retention_s
        self._cas = redis.register_script(COMPARE_AND_SET)
        self._create = redis.register_script(CREATE)
        # A worker's: its jobs' compare-and-sets share round trips (msgq.group_commit).
        self.group: GroupCommit | None = None

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> JobStore:
        return cls(
            redis,
            keys=settings.keys,
            retention_s=settings.retention_s,
            batch_retention_s=settings.batch_retention_s,
        )

    async def get(self, job_id: str) -> JobRecord | None:
        raw = await self.redis.get(self.keys.record_key(job_id))
        return None if raw is None else JobRecord.model_validate_json(raw)

    async def create(
        self,
        record: JobRecord,
        job_payload: bytes,
        score_ms: int,
        placement: Placement | None = None,
    ) -> JobRecord | None:
        """Store the record and enqueue its arq job in one atomic step (one script, one round
        trip); an existing ID wins. Returns the existing record, or None when this one was
        stored. In a partition of its own (MSGQ_PARTITIONS > 1) the job is created there, then
        placed (the fleet's slot) if it was: a producer lost between leaves an orphan with its
        payload, which the reconciler queues (`worker.reconciler`)."""
        together = self.keys.for_job(record.id).prefix == self.keys.root.prefix
        recorder = Recorder()
        self._enqueue(
            cast(Redis, recorder), record, job_payload, score_ms, placement, announce=together
        )
        keys = [self.keys.record_key(record.id), self.keys.arq_job_key(record.id)]
        args = flatten(recorder.commands, keys)  # plain commands only: a script runs them all
        existing = await self._create(keys=keys, args=args)
        if existing is None:
            if not together:
                await self._announce(record.id, score_ms, placement)
            return None
        if existing == b"":
            return await self.ensure(record)
        return JobRecord.model_validate_json(existing)

    def _enqueue(
        self,
        pipe: Redis,
        record: JobRecord,
        job_payload: bytes,
        score_ms: int,
        placement: Placement | None = None,
        *,
        announce: bool = True,
    ) -> None:
        """Record, payload and a queue entry: arq's queue, or the scheduler's when placed.
        `announce` False: the placement and the wake are left to `_announce` (another slot)."""
        part = self.keys.for_job(record.id)  # the job's partition: its keys and indexes
        pipe.set(part.record_key(record.id), record.model_dump_json())
        pipe.set(part.arq_job_key(record.id), job_payload)
        if placement is None:
            pipe.zadd(part.queue, {record.id: score_ms}, nx=True)
        if announce:
            self._announce_on(pipe, record.id, score_ms, placement)
        pipe.zadd(part.index_key, {record.id: score_ms})
        index_new(pipe, part, record, score_ms)
        pipe.zadd(part.active_key, {record.id: score_ms})
        if record.tenant:
            pipe.zadd(part.tenant_jobs_key(record.tenant), {record.id: score_ms})

    def _announce_on(
        self, pipe: Redis, job_id: str, score_ms: int, placement: Placement | None
    ) -> None:
        """The fleet's side of a new job: its place in the scheduler, or the workers' wake."""
        if placement is None:
            publish(pipe, self.keys, self.keys.queue_wake, job_id)  # idle workers poll now
        else:
            placement.write(pipe, job_id, score_ms)

    async def _announce(self, job_id: str, score_ms: int, placement: Placement | None) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:  # the fleet's slot
            self._announce_on(cast(Redis, pipe), job_id, score_ms, placement)
            await pipe.execute()

    def enqueue_fresh(
        self, pipe: Redis, jobs: list[tuple[JobRecord, bytes]], score_ms: int
    ) -> None:
        """Queue fresh IDs (a batch's, all in its partition) on `pipe`, in the caller's
        transaction: no checks, and no wake (the caller's, once)."""
        for record, payload in jobs:
            self._enqueue(pipe, record, payload, score_ms, announce=False)

    async def ensure(self, record: JobRecord) -> JobRecord:
        """Create the record if missing (jobs from raw Redis producers); return the current one."""
        return (await self.ensure_raw(record))[0]

    async def ensure_raw(self, record: JobRecord) -> tuple[JobRecord, bytes | None]:
        """`ensure`, with the record's JSON as read (for a later compare-and-set), if it was."""
        key = self.keys.record_key(record.id)
        raw = await self.redis.get(key)  # the usual case: the producer already wrote it
        if raw is not None:
            return JobRecord.model_validate_json(raw), raw
        return await self._create_missing(record), None

    async def _create_missing(self, record: JobRecord) -> JobRecord:
        key = self.keys.record_key(record.id)
        created = await self.redis.set(key, record.model_dump_json(), nx=True)
        if created:
            score = int(record.created_at.timestamp() * 1000)
            part = self.keys.for_job(record.id)
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zadd(part.index_key, {record.id: score})
                index_new(pipe, part, record, score)
                pipe.zadd(part.active_key, {record.id: score})
                await pipe.execute()
            return record
        current = await self.get(record.id)
        return current if current is not None else record

    async def update(
        self,
        job_id: str,
        change: Change,
        *,
        expected: bytes | None = None,
        current: JobRecord | None = None,
        also: Sequence[tuple[str, ...]] = (),
    ) -> JobRecord | None:
        """Apply `change` under WATCH. It returns the new record or None for no change.

        Terminal records are passed to `change` too, but a terminal record is never replaced.
        Returns the record as stored afterwards.

        `expected`: the record's JSON as the caller last saw it (the worker's hot path). The
        change is then applied from it and written by one compare-and-set script, with every
        side effect of `_write` in the same atomic step: one round trip instead of three.
        Anything else (the record moved on meanwhile) falls back to WATCH. `current`: the
        record `expected` parses to, when the caller has it (spares parsing it again).

        `also`: commands (SCRIPT_SAFE ones) written in the same atomic step, only when the
        change is (e.g. ending the job in the queue with its terminal record).
        """
        if expected is not None:
            done = await self._compare_and_set(job_id, change, expected, current, also)
            if done is not None:
                return await outbox.announce(self.redis, self.keys, done)  # a webhook owed
        key = self.keys.record_key(job_id)

        async def body(pipe: Pipeline) -> tuple[JobRecord | None, Writes | None]:
            raw = await pipe.get(key)
            if raw is None:
                return None, None
            current = JobRecord.model_validate_json(raw)
            new = None if current.status.terminal else change(current)
            if new is None:
                return current, None

            def writes(pipe: Pipeline) -> None:
                self._write(pipe, new, current.status)
                for command in also:
                    pipe.execute_command(*command)

            return new, writes

        return await outbox.announce(self.redis, self.keys, await watched(self.redis, [key], body))

    async def _compare_and_set(
        self,
        job_id: str,
        change: Change,
        expected: bytes,
        current: JobRecord | None,
        also: Sequence[tuple[str, ...]],
    ) -> JobRecord | None:
        if current is None:
            current = JobRecord.model_validate_json(expected)
        new = None if current.status.terminal else change(current)
        if new is None:
            return None
        recorder = Recorder()
        self._write(cast(Redis, recorder), new, current.status)  # recorded, never sent
        commands = [*recorder.commands, *also]
        if any(str(args[0]).upper() not in SCRIPT_SAFE for args in commands):
            return None  # e.g. a script of its own (a batch's webhook): WATCH/MULTI instead
        written = await self._run_cas(self.keys.record_key(job_id), expected, commands)
        return new if int(written) == 1 else None

    def _write(self, pipe: Redis, record: JobRecord, previous: JobStatus | None = None) -> None:
        keep_s = max(self.retention_s, self.batch_retention_s)
        part = self.keys.for_job(record.id)
        index_status(pipe, part, record, keep_s, previous=previous)
        if not record.status.terminal:
            pipe.set(part.record_key(record.id), record.model_dump_json())
            return
        # A batch's results are kept as long as the batch (the API keeps them 29 days).
        ttl = self.batch_retention_s if record.batch_id else self.retention_s
        record = outbox.pending(record)  # webhook state `pending` when it has a callback_url
        pipe.set(part.record_key(record.id), record.model_dump_json(), ex=ttl)
        index_expiry(pipe, part, record, ttl)  # so the reconciler unindexes it when it expires
        pipe.zrem(part.active_key, record.id)
        if record.lane is not Lane.REALTIME:  # a batch-lane spec is never left behind
            pipe.delete(part.lane_spec_key(record.id))
        if record.batch_id:
            # In the same transaction as the write-once terminal record, so counts are exact.
            counts = self.keys.batch_counts_key(record.batch_id)
            pipe.hincrby(counts, record.status.value, 1)
            pipe.hset(counts, "last_at", (record.finished_at or utcnow()).isoformat())
        outbox.schedule(pipe, self.keys, record)  # the webhook owed, durable with the record itself
        # The partition's copy of the minute's count: in the record's slot (summed when read).
        record_minute(pipe, part, record.status.value, tenant=record.tenant)
        publish(pipe, part, part.done_channel, record.id)

    async def keep_spec(self, job_id: str, spec: dict[str, Any]) -> None:
        """A failed job's spec, kept as long as its record, so `msgq retry` can re-run it."""
        await self.redis.set(self.keys.spec_key(job_id), orjson.dumps(spec), ex=self.retention_s)

    async def reopen(
        self, job_id: str, job_payload: Callable[[dict[str, Any]], bytes]
    ) -> JobRecord | None:
        """failed/expired → queued with attempts reset, re-enqueued from the kept spec, atomically.

        The one deliberate exception to write-once: an operator asked for a new run. Returns
        None when there is nothing to re-run (`retry_policy.retry_verdict` says why, or no spec).
        """
        key = self.keys.record_key(job_id)

        async def body(pipe: Pipeline) -> tuple[JobRecord | None, Writes | None]:
            raw, spec = await pipe.get(key), await pipe.get(self.keys.spec_key(job_id))
            record = None if raw is None else JobRecord.model_validate_json(raw)
            fresh = None if record is None or spec is None else records.reopened(record)
            if fresh is None or spec is None:
                return None, None
            now_ms = int(utcnow().timestamp() * 1000)
            previous = record.status if record else None
            part = self.keys.for_job(job_id)

            def writes(pipe: Pipeline) -> None:
                pipe.set(key, fresh.model_dump_json())
                index_status(pipe, part, fresh, previous=previous)
                pipe.zadd(part.active_key, {job_id: now_ms})
                pipe.set(part.arq_job_key(job_id), job_payload(orjson.loads(spec)))
                pipe.zadd(part.queue, {job_id: now_ms})
                pipe.delete(self.keys.spec_key(job_id))

            return fresh, writes

        fresh = await watched(self.redis, [key, self.keys.spec_key(job_id)], body)
        if fresh is not None:  # the wake is the fleet's (another slot): sent after
            await publish(self.redis, self.keys, self.keys.queue_wake, job_id)
        return fresh

    async def cancel(self, job_id: str) -> JobRecord | None:
        """Queued or retrying: canceled now and dequeued. In progress: flagged, and the worker
        running it is asked to abort the call."""
        record = await self.update(job_id, records.cancel_asked)
        if record is not None and record.status is JobStatus.CANCELED:
            # Free the queue slot; a worker that already picked it up sees `canceled` and stops.
            await self.unqueue(job_id)
        elif record is not None and record.cancel_requested and not record.status.terminal:
            abort_key = self.keys.for_job(job_id).abort_key
            key, mapping = arq_format.abort_request(abort_key, job_id)
            await self.redis.zadd(key, mapping)
        return record

    async def unqueue(self, job_id: str) -> None:
        """Take an ended job out of whichever queue holds it (arq's or the scheduler's): not one
        transaction (two slots with partitions), each step safe to repeat."""
        where = await self.redis.hget(self.keys.sched_where, job_id)  # type: ignore[misc]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.keys.for_job(job_id).queue, job_id)
            pipe.delete(self.keys.arq_job_key(job_id))
            pipe.zrem(self.keys.sched_deadlines, job_id)
            if where is not None:
                pipe.zrem(where.decode(), job_id)
                pipe.hdel(self.keys.sched_where, job_id)
                pipe.hdel(self.keys.sched_est, job_id)
            await pipe.execute()

    async def expire_job(self, job_id: str) -> bool:
        """End a job `expired` (its batch or deadline passed) and drop it from the queue; an
        attempt in flight may still answer, but its late result is discarded (write-once)."""
        await keep_spec_from_queue(self.redis, self.keys, job_id, ttl_s=self.retention_s)
        record = await self.update(job_id, lambda r: records.ended(r, JobStatus.EXPIRED))
        if record is None or record.status is not JobStatus.EXPIRED:
            return False
        await self.unqueue(job_id)
        return True

    async def get_many(self, job_ids: list[str]) -> list[JobRecord | None]:
        """Records in the order asked; None where there is none."""
        if not job_ids:
            return []
        raws = await self.redis.mget([self.keys.record_key(i) for i in job_ids])
        return [None if raw is None else JobRecord.model_validate_json(raw) for raw in raws]

    async def payloads_present(self, job_ids: list[str]) -> list[bool]:
        """Whether each job's queued payload still exists (the queue has not yet let go)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.exists(self.keys.arq_job_key(job_id))
            return [bool(n) for n in await pipe.execute()]

    async def page(
        self,
        *,
        tenant: str | None = None,
        status: JobStatus | None = None,
        limit: int = 100,
        after_id: str | None = None,
    ) -> tuple[list[JobRecord], bool]:
        """Newest first, `limit` records after `after_id`; True when more follow (read across
        the partitions, `msgq.jobs.listing`)."""
        return await listing.page(
            self.redis, self.keys, tenant=tenant, status=status, limit=limit, after_id=after_id
        )

    async def swap(self, job_id: str, expected: bytes, new: bytes) -> bool:
        """Replace a record that still holds exactly `expected` with `new`, nothing else
        written (a running job's `progress`): one compare-and-set, with a worker's other
        writes (`group`). False when the record had moved on: nothing was written."""
        key = self.keys.record_key(job_id)
        return int(await self._run_cas(key, expected, [("SET", key, new)])) == 1

    async def _run_cas(self, key: str, expected: bytes, commands: Sequence[tuple[Any, ...]]) -> Any:
        """COMPARE_AND_SET on the record `key`: through the worker's group commit if it has one."""
        keys = [key]
        args = [expected, *flatten(commands, keys)]
        if self.group is not None:
            return await self.group.call(self._cas, keys, args)
        return await self._cas(keys=keys, args=args)

    async def set_progress(self, job_id: str, tokens: int | None) -> None:
        """A running job's output tokens so far (None clears them). Only an in-progress record
        is touched: a terminal or re-queued one never is (WATCH sees to races). Nothing but
        `progress` changes, so unlike `update` it leaves the status indexes alone."""
        key = self.keys.record_key(job_id)

        async def body(pipe: Pipeline) -> tuple[None, Writes | None]:
            raw = await pipe.get(key)
            record = None if raw is None else JobRecord.model_validate_json(raw)
            if record is None or record.status is not JobStatus.IN_PROGRESS:
                return None, None
            if record.progress == tokens:
                return None, None
            value = record.model_copy(update={"progress": tokens}).model_dump_json()
            return None, lambda pipe: pipe.set(key, value)

        await watched(self.redis, [key], body)
