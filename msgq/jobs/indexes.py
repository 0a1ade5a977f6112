"""Secondary indexes of the job records, by status and by model: sorted sets written in the same
transactions as the records, so listings and the dashboard read an index instead of scanning
every key. Active statuses and models are scored by creation time, ended statuses by end time.

Records expire after their retention and the indexes are not told: readers prune entries whose
record is gone, and each write trims entries older than `keep_s` (the longest retention), so an
index holds at most that window however long the fleet runs.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from msgq.keys import model_jobs_key, status_jobs_key
from schemas import JobRecord, JobStatus

DEFAULT_KEEP_S = 29 * 24 * 3600  # the longest retention (a batch's results)


def created_ms(record: JobRecord) -> int:
    return int(record.created_at.timestamp() * 1000)


def _trim(pipe: Redis, key: str, keep_s: int) -> None:
    pipe.zremrangebyscore(key, "-inf", int((time.time() - keep_s) * 1000))


def index_new(
    pipe: Redis, record: JobRecord, score_ms: int | None = None, keep_s: int = DEFAULT_KEEP_S
) -> None:
    """A fresh record: its status (queued) and its model, on the caller's pipeline."""
    score = created_ms(record) if score_ms is None else score_ms
    pipe.zadd(status_jobs_key(record.status.value), {record.id: score})
    if record.model:
        pipe.zadd(model_jobs_key(record.model), {record.id: score})
        _trim(pipe, model_jobs_key(record.model), keep_s)


def index_status(
    pipe: Redis,
    record: JobRecord,
    keep_s: int = DEFAULT_KEEP_S,
    *,
    previous: JobStatus | None = None,
) -> None:
    """Move the record to its status's index. With the status it had (`previous`, read in the
    same transaction) only that index is cleared; without it every other status is, so a write
    from any path leaves the index right (eight ZREMs a write were most of Redis's work on the
    hot path)."""
    if previous is None:
        for status in JobStatus:
            if status is not record.status:
                pipe.zrem(status_jobs_key(status.value), record.id)
    elif previous is not record.status:
        pipe.zrem(status_jobs_key(previous.value), record.id)
    key = status_jobs_key(record.status.value)
    if record.status.terminal:
        ended = record.finished_at.timestamp() if record.finished_at else time.time()
        pipe.zadd(key, {record.id: int(ended * 1000)})
        _trim(pipe, key, keep_s)
    else:
        pipe.zadd(key, {record.id: created_ms(record)})
