"""Secondary indexes of the job records, by status and by model: sorted sets written in the same
transactions as the records, so listings and the dashboard read an index instead of scanning
every key. Active statuses and models are scored by creation time, ended statuses by end time.

Records expire after their retention (a Redis TTL), and Redis does not tell the indexes. So each
terminal write also notes when its record will expire (`keys.expiring_key`, with the indexes that
name it), and the reconciler takes those entries out once that time has passed
(`prune_expired`): every index then holds what the live records need, within one reconciler
interval, however long the fleet runs. Listings still drop an entry whose record they find gone,
and the status and model indexes still trim by score past the longest retention (entries
written before the expiry notes existed).
"""

from __future__ import annotations

import time

import orjson
from redis.asyncio import Redis

from msgq.keys import Keyspace
from schemas import JobRecord, JobStatus

DEFAULT_KEEP_S = 29 * 24 * 3600  # the longest retention (a batch's results)
PRUNE_CHUNK = 500  # expired entries per round trip
PRUNE_MAX = 100_000  # per reconciler pass: a pass stays bounded; the rest go on the next one

# One expired note. KEYS: the notes, the record, then the indexes naming it. ARGV: the note, the
# job ID, now (ms). The record gone: out of every index, note dropped (returns 1). The record
# still there with a TTL (the clocks differ, or it ended again): the note moves to its new end.
# The record there for good (re-opened by `msgq retry`): note dropped, its next ending writes
# another. One script, so a job re-submitted under the same ID between the check and the
# removal cannot lose its new entries.
PRUNE = """
local ttl = redis.call('PTTL', KEYS[2])
if ttl == -2 then
  for i = 3, #KEYS do redis.call('ZREM', KEYS[i], ARGV[2]) end
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
if ttl == -1 then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], tonumber(ARGV[3]) + ttl, ARGV[1])
end
return 0
"""


def created_ms(record: JobRecord) -> int:
    return int(record.created_at.timestamp() * 1000)


def _trim(pipe: Redis, key: str, keep_s: int) -> None:
    pipe.zremrangebyscore(key, "-inf", int((time.time() - keep_s) * 1000))


def index_new(
    pipe: Redis,
    keys: Keyspace,
    record: JobRecord,
    score_ms: int | None = None,
    keep_s: int = DEFAULT_KEEP_S,
) -> None:
    """A fresh record: its status (queued) and its model, on the caller's pipeline."""
    score = created_ms(record) if score_ms is None else score_ms
    pipe.zadd(keys.status_jobs_key(record.status.value), {record.id: score})
    if record.model:
        pipe.zadd(keys.model_jobs_key(record.model), {record.id: score})
        _trim(pipe, keys.model_jobs_key(record.model), keep_s)


def index_status(
    pipe: Redis,
    keys: Keyspace,
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
                pipe.zrem(keys.status_jobs_key(status.value), record.id)
    elif previous is not record.status:
        pipe.zrem(keys.status_jobs_key(previous.value), record.id)
    key = keys.status_jobs_key(record.status.value)
    if record.status.terminal:
        ended = record.finished_at.timestamp() if record.finished_at else time.time()
        pipe.zadd(key, {record.id: int(ended * 1000)})
        _trim(pipe, key, keep_s)
    else:
        pipe.zadd(key, {record.id: created_ms(record)})


def index_expiry(pipe: Redis, keys: Keyspace, record: JobRecord, ttl_s: int) -> None:
    """Note when a terminal record written now with `ttl_s` will be gone, and which indexes
    name it (its tenant, model and status), for `prune_expired`."""
    note = orjson.dumps([record.id, record.tenant, record.model, record.status.value])
    pipe.zadd(keys.expiring_key, {note: int((time.time() + ttl_s) * 1000)})


def _indexes_of(keys: Keyspace, note: bytes) -> tuple[str, list[str]]:
    job_id, tenant, model, status = orjson.loads(note)
    indexes = [keys.index_key, keys.status_jobs_key(status)]
    if tenant:
        indexes.append(keys.tenant_jobs_key(tenant))
    if model:
        indexes.append(keys.model_jobs_key(model))
    return str(job_id), indexes


async def prune_expired(redis: Redis, keys: Keyspace, *, limit: int = PRUNE_MAX) -> int:
    """Take the records that expired out of every index, in every partition (the
    reconciler's pass, under its lock). Returns how many records' entries were removed."""
    removed = 0
    for part in keys.parts:
        removed += await _prune_partition(redis, part, limit=limit)
    return removed


async def _prune_partition(redis: Redis, keys: Keyspace, *, limit: int) -> int:
    prune = redis.register_script(PRUNE)
    removed = seen = 0
    while seen < limit:
        now_ms = int(time.time() * 1000)
        notes = await redis.zrangebyscore(
            keys.expiring_key, "-inf", now_ms, start=0, num=PRUNE_CHUNK
        )
        if not notes:
            break
        async with redis.pipeline(transaction=False) as pipe:
            for note in notes:
                try:
                    job_id, indexes = _indexes_of(keys, note)
                except (orjson.JSONDecodeError, TypeError, ValueError):
                    pipe.zrem(keys.expiring_key, note)  # not one of msgq's: never due again
                    continue
                touched = [keys.expiring_key, keys.record_key(job_id), *indexes]
                await prune(keys=touched, args=[note, job_id, now_ms], client=pipe)
            removed += sum(int(n) for n in await pipe.execute())
        seen += len(notes)
    return removed
