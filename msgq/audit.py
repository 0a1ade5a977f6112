"""`msgq audit`: check the invariants that make "every job ends" true, and report what breaks.

Read-only; safe on a live fleet, though a fleet that is busy will show the moments between a
lock lapsing and the job being picked up again. Run it on a quiet fleet (or twice) to be sure.
Checked:
- every record is terminal, or has its queued job or a live in-progress lock, or sits in the
  batch lane (pooled, or in an upstream batch msgq tracks) (else: orphan);
- no `in_progress` record is without its lock (or its upstream batch);
- every job waiting in a scheduler queue has that queue listed in the backlog the dispatcher
  reads (else it is never admitted);
- every batch's counts equal its records' statuses;
- every key that is due a TTL has one (terminal records, kept specs, batches, locks);
- every webhook outbox entry has its job or batch, is due, and is within its 24 h window.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from msgq import lanes
from msgq.batches import COUNT_FIELDS, BatchMeta, job_id_for
from msgq.keys import Keyspace
from msgq.ledger import budget_mismatches
from msgq.liveness import live_workers
from msgq.tenancy.budgets import periods
from msgq.webhooks.outbox import audit_findings
from schemas import JobRecord, JobStatus

SAMPLE = 10  # IDs shown per violation


@dataclass
class Finding:
    check: str
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, example: str) -> None:
        self.count += 1
        if len(self.examples) < SAMPLE:
            self.examples.append(example)


@dataclass
class AuditReport:
    records: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    findings: dict[str, Finding] = field(default_factory=dict)

    def violation(self, check: str, example: str) -> None:
        self.findings.setdefault(check, Finding(check)).add(example)

    @property
    def clean(self) -> bool:
        return not self.findings

    def as_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "records": self.records,
            "by_status": dict(self.by_status),
            "batches": self.batches,
            "violations": {
                k: {"count": f.count, "examples": f.examples} for k, f in self.findings.items()
            },
        }


async def audit(redis: Redis, keys: Keyspace, *, workers: bool = False) -> AuditReport:
    """Every check of one deployment's keys (its namespace's); with `workers`, also that a
    worker is alive to serve waiting jobs."""
    report = AuditReport()
    await _records(redis, keys, report)
    if workers:
        await _check_workers(redis, keys, report)
    await _batches(redis, keys, report)
    await _other_ttls(redis, keys, report)
    for check, example in await audit_findings(redis, keys):
        report.violation(check, example)
    for tenant, counter, expected in await budget_mismatches(redis, keys, periods()[0]):
        example = f"{tenant}: spend counter {counter} µUSD, cost + open reservations {expected}"
        report.violation("budget spend counter differs from its ledger", example)
    return report


async def _check_workers(redis: Redis, keys: Keyspace, report: AuditReport) -> None:
    """Jobs waiting while no worker has been seen: nothing errors, and nothing happens."""
    waiting = sum(report.by_status[s.value] for s in JobStatus if not s.terminal)
    if waiting and not await live_workers(redis, keys):
        report.violation(
            "jobs waiting on a queue with no live worker",
            f"{waiting} job(s) waiting; start `msgq worker` (or `msgq dev`) on this Redis",
        )


async def _scan(redis: Redis, pattern: str) -> list[str]:
    return [k.decode() async for k in redis.scan_iter(match=pattern, count=1000)]


async def _records(redis: Redis, keys: Keyspace, report: AuditReport) -> None:
    for part in keys.parts:  # each partition's records, by a SCAN of its own names
        names = await _scan(redis, part.record_key("*"))
        await _check_records(redis, keys, report, names, len(part.record_key("*")) - 1)


async def _check_records(
    redis: Redis, keys: Keyspace, report: AuditReport, names: list[str], prefix_len: int
) -> None:
    for start in range(0, len(names), 500):
        chunk = names[start : start + 500]
        async with redis.pipeline(transaction=False) as pipe:
            for key in chunk:
                job_id = key[prefix_len:]
                pipe.get(key)
                pipe.ttl(key)
                pipe.exists(keys.arq_job_key(job_id))
                pipe.exists(keys.in_progress_key(job_id))
                pipe.hget(keys.sched_where, job_id)
            values = await pipe.execute()
        placed = await lanes.locations(redis, keys, [key[prefix_len:] for key in chunk])
        waiting: list[tuple[str, str]] = []
        for n in range(len(chunk)):
            raw, ttl, queued, locked, where = values[5 * n : 5 * n + 5]
            if raw is None:
                continue  # expired between the scan and the read
            record = JobRecord.model_validate_json(raw)
            if where is not None and not record.status.terminal:
                waiting.append((record.id, where.decode()))
            report.records += 1
            report.by_status[record.status.value] += 1
            _check_record(
                report,
                record,
                ttl=ttl,
                queued=bool(queued),
                locked=bool(locked) or placed[n] is not None,
            )
        await _check_backlog(redis, keys, report, waiting)


async def _check_backlog(
    redis: Redis, keys: Keyspace, report: AuditReport, waiting: list[tuple[str, str]]
) -> None:
    """A job in a scheduler queue that the backlog does not list is never admitted."""
    if not waiting:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for job_id, queue in waiting:
            pipe.zscore(queue, job_id)
            pipe.sismember(keys.sched_backlog, queue)
        values = await pipe.execute()
    for n, (job_id, _) in enumerate(waiting):
        score, listed = values[2 * n : 2 * n + 2]
        if score is not None and not listed:
            report.violation("waiting in a scheduler queue no dispatcher reads", job_id)


def _check_record(
    report: AuditReport, record: JobRecord, *, ttl: int, queued: bool, locked: bool
) -> None:
    """`locked`: a worker holds the job, or the batch lane does (pool or upstream batch)."""
    if record.status.terminal:
        if ttl < 0:
            report.violation("terminal record without a TTL", record.id)
        return
    if not queued and not locked:
        report.violation("not terminal, with neither a queued job nor a lock", record.id)
    if record.status is JobStatus.IN_PROGRESS and not locked:
        report.violation("in_progress without a lock", record.id)


async def _batches(redis: Redis, keys: Keyspace, report: AuditReport) -> None:
    for key in await _scan(redis, keys.batch_key("*")):
        if key.endswith((":ids", ":counts")):
            continue
        raw = await redis.get(key)
        if raw is not None:
            report.batches += 1
            await _check_batch(redis, keys, report, BatchMeta.model_validate_json(raw))


async def _check_batch(redis: Redis, keys: Keyspace, report: AuditReport, meta: BatchMeta) -> None:
    for key in (
        keys.batch_key(meta.id),
        keys.batch_ids_key(meta.id),
        keys.batch_counts_key(meta.id),
    ):
        if await redis.ttl(key) == -1:
            report.violation("batch key without a TTL", key)
    counted = await redis.hgetall(keys.batch_counts_key(meta.id))  # type: ignore[misc]
    counts = {k.decode(): int(v) for k, v in counted.items() if k.decode() in COUNT_FIELDS}
    ids = [i.decode() for i in await redis.lrange(keys.batch_ids_key(meta.id), 0, -1)]  # type: ignore[misc]
    names = [keys.record_key(job_id_for(meta.tenant, meta.id, c)) for c in ids]
    raws = await redis.mget(names) if names else []
    if any(r is None for r in raws):
        return  # some records are gone (deleted or past retention): nothing to compare
    actual = Counter(JobRecord.model_validate_json(r).status.value for r in raws)
    for status in COUNT_FIELDS:
        if counts.get(status, 0) != actual[status]:
            got = f"counted {counts.get(status, 0)}, records {actual[status]}"
            report.violation("batch counts differ from its records", f"{meta.id} {status}: {got}")


async def _other_ttls(redis: Redis, keys: Keyspace, report: AuditReport) -> None:
    for part in keys.parts:
        for key in await _scan(redis, part.spec_key("*")):
            if await redis.ttl(key) == -1:
                report.violation("kept spec without a TTL", key)
        for key in await _scan(redis, part.in_progress_key("*")):
            if await redis.ttl(key) == -1:
                report.violation("in-progress lock without a TTL", key)
    for key in await _scan(redis, keys.cooldown_key("*")):
        if await redis.ttl(key) == -1:
            report.violation("cool-down without a TTL", key)
