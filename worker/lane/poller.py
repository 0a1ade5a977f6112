"""The poller: each submitted upstream batch is retrieved with backoff until it has ended, then
its results are streamed line by line into the members' records.

Every step can be repeated after a crash: a result is applied only to a job the lane still
places in that batch (`Keyspace.lane_where`), and terminal records are written once, so reading the
results again from the start skips what was done. Per-request outcomes:
- succeeded: `succeeded` at batch prices, `served_by: batch` (a job whose cancel was asked
  ends `canceled`, without the Message but with its usage and cost: it was billed);
- errored, retryable type: back to the pool, or to the realtime queue when the deadline is
  nearer than `batch_sla_s`; final type, or attempts spent: `failed` with the API's error;
- expired (never ran; the attempt is refunded): back to the pool, or realtime as above;
- canceled: `canceled`.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import structlog

from msgq import lanes
from msgq.client import enqueue_payload
from msgq.errors import UpstreamError
from msgq.jobs.records import utcnow
from msgq.lanes import UpstreamBatch
from msgq.pricing import cost_fields
from schemas import JobError, JobErrorType, JobRecord, JobSpec, JobStatus, JobUsage, Lane
from worker import metrics, tracing, transitions
from worker.job.backoff import retry_delay_s
from worker.lane import records as batch_records
from worker.lane.api import LaneApi
from worker.lane.budget import leave_lane, settle
from worker.lane.pool import Batcher, now_ms
from worker.services import Services
from worker.upstream.classify import ERROR_STATUS, RETRYABLE_STATUS

log = structlog.get_logger("msgq.batch")
CHUNK = 500  # result lines looked up and applied together

# The job leaves the lane for arq's queue (realtime): out of its place (the fleet's slot), if it
# is still where it was; then, in its partition, queued and its spec dropped. A crash between
# leaves a job in no place and no queue, with its spec: the reconciler pools it again.
# KEYS: where, sizes. ARGV: job id, expected.
TO_REALTIME = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""


class Poller:
    def __init__(self, services: Services, api: LaneApi, batcher: Batcher) -> None:
        self.services, self.api, self.batcher, self.redis = services, api, batcher, services.redis
        self.settings = services.settings
        self.keys = services.settings.keys
        self._to_realtime = self.redis.register_script(TO_REALTIME)

    async def poll(self, batch: UpstreamBatch) -> None:
        """One look at a submitted batch; reads its results once it has ended."""
        if time.monotonic() < self.batcher.cool_until:
            await self._later(batch, self.batcher.cool_until - time.monotonic())
            return
        assert batch.upstream_id is not None
        try:
            found = await self.api.retrieve(batch.upstream_id)
            if found.get("processing_status") != "ended":
                await self._cancel_if_all_canceled(batch)
                batch.polls += 1
                delay_s = self.settings.batch_poll_s * 2 ** min(batch.polls, 20)
                await self._later(batch, min(delay_s, self.settings.batch_poll_max_s))
                return
            batch.state = "reading"
            await self._later(batch, self.settings.batch_poll_s)  # if this read dies mid-way
            with tracing.upstream_batch(batch):
                await self._read(batch, found)
        except UpstreamError as exc:
            await self._failed_call(batch, exc)
            return
        await self._sweep(batch)
        await lanes.drop_batch(self.redis, self.keys, batch.handle)
        log.info("batch.ended", handle=batch.handle, upstream_id=batch.upstream_id)

    async def _failed_call(self, batch: UpstreamBatch, exc: UpstreamError) -> None:
        """429 and retry-after are obeyed; anything else backs off and looks again."""
        if exc.status_code == 404 and batch.state == "submitted":
            log.error("batch.vanished_upstream", handle=batch.handle, upstream_id=batch.upstream_id)
            await self._sweep(batch)  # the API no longer knows it: its jobs are sent again
            await lanes.drop_batch(self.redis, self.keys, batch.handle)
            return
        if exc.status_code == 429:
            self.batcher.cool_until = time.monotonic() + (exc.retry_after_s or 1.0)
        batch.polls += 1
        batch.last_error = exc.message[:300]
        delay_s = retry_delay_s(
            min(batch.polls, 10),
            exc.retry_after_s,
            base_s=self.settings.batch_poll_s,
            factor=2.0,
            max_s=self.settings.batch_poll_max_s,
        )
        log.warning("batch.poll_failed", handle=batch.handle, status_code=exc.status_code)
        await self._later(batch, delay_s)

    async def _later(self, batch: UpstreamBatch, delay_s: float) -> None:
        await lanes.save_batch(
            self.redis, self.keys, batch, due_ms=now_ms() + int(max(delay_s, 0.05) * 1000)
        )

    async def _cancel_if_all_canceled(self, batch: UpstreamBatch) -> None:
        """The upstream batch is cancelled only once every member's cancel was asked."""
        if batch.cancel_sent or batch.upstream_id is None:
            return
        async for chunk in lanes.member_chunks(self.redis, self.keys, batch.handle, 100):
            records = await self.services.store.get_many([job_id for _, job_id, _ in chunk])
            for record in records:
                if (
                    record is not None
                    and not record.status.terminal
                    and not record.cancel_requested
                ):
                    return
        await self.api.cancel(batch.upstream_id)
        batch.cancel_sent = True
        log.info("batch.cancel_sent", handle=batch.handle, upstream_id=batch.upstream_id)

    async def _read(self, batch: UpstreamBatch, found: dict[str, Any]) -> None:
        lines: list[str] = []
        async with self.api.result_lines(self.api.results_url(found)) as stream:
            async for line in stream:
                lines.append(line)
                if len(lines) >= CHUNK:
                    await self._apply_lines(batch, lines)
                    lines = []
        await self._apply_lines(batch, lines)

    async def _apply_lines(self, batch: UpstreamBatch, lines: list[str]) -> None:
        rows = [orjson.loads(line) for line in lines]
        if not rows:
            return
        key = self.keys.lane_batch_members_key(batch.handle)
        cids = [str(r.get("custom_id")) for r in rows]
        members = await self.redis.hmget(key, cids)  # type: ignore[misc]  # redis-py's stubs
        for row, member in zip(rows, members, strict=True):
            if member is None:
                log.warning("batch.unknown_custom_id", handle=batch.handle)
                continue
            await self.apply(batch, member.decode(), row.get("result") or {})

    async def apply(self, batch: UpstreamBatch, job_id: str, result: dict[str, Any]) -> None:
        """One request's outcome into its job's record, if the job is still in this batch."""
        if await self.redis.hget(self.keys.lane_where, job_id) != batch.handle.encode():  # type: ignore[misc]
            return  # applied before this read (a crash, a re-read), or moved on
        record = await self.services.store.get(job_id)
        kind = result.get("type")
        if record is None or record.status.terminal:  # ended meanwhile (its msgq batch expired)
            message = result.get("message") if kind == "succeeded" else None
            cost = (  # still billed
                self._cost(record, message)["cost_usd"] if record and message else None
            )
            await leave_lane(
                self.redis, self.keys, job_id, batch.handle, record=record, cost_usd=cost
            )
            return
        tracing.batch_result(record, result)
        if kind == "succeeded":
            await self._succeeded(batch, record, result.get("message") or {})
        elif kind == "errored":
            await self._errored(batch, record, result.get("error") or {})
        elif kind == "canceled" or record.cancel_requested:
            await self._end(batch, record, JobStatus.CANCELED)
        else:  # expired, or a type this msgq does not know: it did not run
            error = JobError(
                type=JobErrorType.BATCH_EXPIRED,
                message="the upstream batch expired before this request ran",
                retryable=True,
            )
            await self.send_again(batch.handle, record, error, refund=True)

    async def _succeeded(
        self, batch: UpstreamBatch, record: JobRecord, message: dict[str, Any]
    ) -> None:
        usage: dict[str, Any] = message.get("usage") or {}
        priced = self._cost(record, message)
        counts = {k: int(usage.get(k) or 0) for k in JobUsage.model_fields}
        fields: dict[str, Any] = {"usage": JobUsage.model_validate(counts), **priced}
        metrics.COST.inc(priced["cost_usd"] or 0)
        if record.cancel_requested:  # billed, so reported; the Message stays out of the record
            await self._end(batch, record, JobStatus.CANCELED, **fields)
            return
        await self._end(batch, record, JobStatus.SUCCEEDED, result=message, error=None, **fields)

    def _cost(self, record: JobRecord, message: dict[str, Any]) -> dict[str, Any]:
        """At batch prices: half of everything, cache multipliers included."""
        usage: dict[str, Any] = message.get("usage") or {}
        return cost_fields(record.model or "", usage, self.settings.prices_file, batch=True)

    async def _errored(self, batch: UpstreamBatch, record: JobRecord, body: dict[str, Any]) -> None:
        nested = body.get("error")
        inner: dict[str, Any] = nested if isinstance(nested, dict) else body
        kind = str(inner.get("type") or "api_error")
        status = ERROR_STATUS.get(kind, 500)
        error = JobError(
            type=kind,
            message=str(inner.get("message") or kind)[:2000],
            status_code=status,
            request_id=body.get("request_id"),
            retryable=status in RETRYABLE_STATUS,
        )
        if record.cancel_requested:
            await self._end(batch, record, JobStatus.CANCELED, error=error)
        elif not error.retryable or record.attempts >= record.max_attempts:
            spec = await self.redis.get(self.keys.lane_spec_key(record.id))
            await self._end(batch, record, JobStatus.FAILED, error=error)
            if spec is not None:  # kept so `msgq retry` can re-run it
                await self.services.store.keep_spec(record.id, orjson.loads(spec))
        else:
            await self.send_again(batch.handle, record, error, refund=False)

    async def _end(
        self, batch: UpstreamBatch, record: JobRecord, status: JobStatus, **fields: Any
    ) -> None:
        await transitions.finish_durably(
            self.services.store,
            record.id,
            status,
            hold=self.services.held,
            served_by=Lane.BATCH,
            upstream_batch_id=batch.upstream_id,
            **fields,
        )
        cost = fields.get("cost_usd")
        await leave_lane(
            self.redis, self.keys, record.id, batch.handle, record=record, cost_usd=cost
        )

    async def send_again(
        self, handle: str, record: JobRecord, error: JobError | None, *, refund: bool
    ) -> None:
        """Back to the pool, or to realtime when the deadline cannot wait for another batch.
        `handle` is where the job is now ('' for nowhere: the reconciler's orphans)."""
        left_s = (record.deadline - utcnow()).total_seconds() if record.deadline else None
        to_pool = left_s is None or left_s >= self.settings.batch_sla_s
        stored = await self.services.store.update(
            record.id,
            lambda r: batch_records.sent_again(r, error=error, refund=refund, to_pool=to_pool),
        )
        if stored is None or stored.status.terminal:
            await leave_lane(self.redis, self.keys, record.id, handle, record=record)
            return
        if to_pool:
            await lanes.repool(self.redis, self.keys, record.id, handle, now_ms())
            log.info("batch.repooled", job_id=record.id, cause=error.type if error else None)
            return
        await self._realtime(record.id, handle)

    async def _realtime(self, job_id: str, handle: str) -> None:
        raw = await self.redis.get(self.keys.lane_spec_key(job_id))
        if raw is None:
            return
        spec = JobSpec.model_validate({**orjson.loads(raw), "lane": Lane.REALTIME.value})
        ks = self.keys
        payload = enqueue_payload(spec, now_ms())
        if await self._to_realtime(keys=[ks.lane_where, ks.lane_sizes], args=[job_id, handle]):
            async with self.redis.pipeline(transaction=True) as pipe:  # the job's partition
                pipe.set(ks.arq_job_key(job_id), payload)
                pipe.zadd(ks.for_job(job_id).queue, {job_id: now_ms()})
                pipe.delete(ks.lane_spec_key(job_id))
                await pipe.execute()
            # The realtime attempt reserves the budget again, as any worker attempt does.
            await settle(self.redis, self.keys, job_id, tenant=None, cost_usd=None, model=None)
        log.info("batch.sent_realtime", job_id=job_id, reason="deadline")

    async def _sweep(self, batch: UpstreamBatch) -> None:
        """Members the results did not mention never ran: sent again (attempt refunded)."""
        async for chunk in lanes.member_chunks(self.redis, self.keys, batch.handle):
            for _, job_id, still in chunk:
                record = await self.services.store.get(job_id) if still else None
                if record is not None and not record.status.terminal:
                    await self.send_again(batch.handle, record, None, refund=True)
                elif still:
                    await leave_lane(self.redis, self.keys, job_id, batch.handle, record=record)
