"""Secondary indexes of the job records, by status and by model: sorted sets (id -> created ms)
written in the same transactions as the records, so listings and the dashboard read an index
instead of scanning every key. Entries whose record has expired are pruned by their readers."""

from __future__ import annotations

from redis.asyncio import Redis

from schemas import JobRecord, JobStatus
from worker.keys import model_jobs_key, status_jobs_key


def created_ms(record: JobRecord) -> int:
    return int(record.created_at.timestamp() * 1000)


def index_new(pipe: Redis, record: JobRecord, score_ms: int | None = None) -> None:
    """A fresh record: its status (queued) and its model, on the caller's pipeline."""
    score = created_ms(record) if score_ms is None else score_ms
    pipe.zadd(status_jobs_key(record.status.value), {record.id: score})
    if record.model:
        pipe.zadd(model_jobs_key(record.model), {record.id: score})


def index_status(pipe: Redis, record: JobRecord) -> None:
    """Move the record to its status's index. Every other status is cleared rather than only the
    previous one, so a write from any path (or a lost earlier write) leaves the index right."""
    for status in JobStatus:
        if status is not record.status:
            pipe.zrem(status_jobs_key(status.value), record.id)
    pipe.zadd(status_jobs_key(record.status.value), {record.id: created_ms(record)})
