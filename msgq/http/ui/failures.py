"""Failed jobs grouped by error type and message, and "retry all in this group" (as `msgq retry`).

Grouping reads the newest `budget` failed records from the failed-status index (the page says
how many of how many); a retry walks the whole index, since an operator asked for all of them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from redis.asyncio import Redis

from msgq.client import Client
from msgq.http.ui.queries import SCAN_BUDGET, JobFilter, walk_for
from msgq.jobs.retry_policy import retry_verdict
from msgq.keys import Keyspace
from schemas import JobRecord, JobStatus

SAMPLE_IDS = 5
RETRY_READ = 1_000_000  # a retry reads the whole failed index


def group_key(data: dict[str, Any]) -> str:
    error = data.get("error") or {}
    text = f"{error.get('type', '')}\0{error.get('message', '')}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class FailureGroup:
    key: str
    type: str
    message: str
    count: int = 0
    job_ids: list[str] = field(default_factory=list)
    models: set[str] = field(default_factory=set)
    tenants: set[str] = field(default_factory=set)
    retryable: int = 0  # where a retry can change the outcome (`retry_policy`)
    why_not: str = ""  # why the others cannot be retried, for the page
    last_at: datetime | None = None

    def add(self, data: dict[str, Any]) -> None:
        self.count += 1
        if len(self.job_ids) < SAMPLE_IDS:
            self.job_ids.append(str(data["id"]))
        if data.get("model"):
            self.models.add(str(data["model"]))
        if data.get("tenant"):
            self.tenants.add(str(data["tenant"]))
        verdict = retry_verdict(JobRecord.model_validate(data))
        self.retryable += verdict.allowed
        self.why_not = self.why_not or verdict.reason
        finished = data.get("finished_at")
        at = datetime.fromisoformat(finished) if finished else None
        if at is not None and (self.last_at is None or at > self.last_at):
            self.last_at = at


@dataclass
class Failures:
    groups: list[FailureGroup]
    scanned: int
    # How many failed jobs there are (of the tenant, when one is given); None when the read
    # stopped before the end of a tenant's jobs, where the index size would count all tenants.
    total: int | None


def _failed(tenant: str | None) -> JobFilter:
    return JobFilter(status=JobStatus.FAILED, tenant=tenant)


async def failure_groups(
    redis: Redis, keys: Keyspace, *, tenant: str | None, budget: int = SCAN_BUDGET
) -> Failures:
    """Groups, largest first, from the newest `budget` failed records (of `tenant`, if given)."""
    groups: dict[str, FailureGroup] = {}
    scanned = 0
    walk, size = await walk_for(redis, keys, _failed(tenant))
    async for _, data in walk.rows("", budget):
        scanned += 1
        key = group_key(data)
        if key not in groups:
            error = data.get("error") or {}
            kind, text = str(error.get("type", "")), str(error.get("message", ""))
            groups[key] = FailureGroup(key, kind, text)
        groups[key].add(data)
    ordered = sorted(groups.values(), key=lambda g: (-g.count, g.type, g.message))
    if tenant is not None:
        return Failures(ordered, scanned, scanned if walk.exhausted else None)
    return Failures(ordered, scanned, size)


async def retry_group(
    redis: Redis, keys: Keyspace, client: Client, key: str, *, tenant: str | None
) -> tuple[int, int]:
    """Requeue every failed job of the group with its kept request: (requeued, not retried)."""
    # All IDs first: each retry moves a job out of the index being walked.
    walk, _ = await walk_for(redis, keys, _failed(tenant))
    ids = [str(d["id"]) async for _, d in walk.rows("", RETRY_READ) if group_key(d) == key]
    requeued = 0
    for job_id in ids:
        requeued += await client.retry(job_id) is not None
    return requeued, len(ids) - requeued
