"""Moving a raw producer's job to the ID it belongs under (`tenant:id`), so a job that names a
tenant is one job everywhere: scheduled, billed, stored and read as that tenant's."""

from __future__ import annotations

from msgq.channels import publish
from msgq.jobs.records import utcnow
from msgq.jobs.store import JobStore

# KEYS: the new ID's payload, record and arq queue (its partition: one slot). ARGV: the payload,
# due ms, the new ID. Queues the job under the new ID unless that job has a record (it ran, or
# runs); returns 1 when it is queued now (or was already: ZADD NX keeps its place), else 0.
# One step: written as two, a crash between them left a payload under the new ID that no queue
# named, and the old entry's next pick-up, seeing the payload there, dropped the job for good.
QUEUE_AS = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'NX')
redis.call('ZADD', KEYS[3], 'NX', ARGV[2], ARGV[3])
return 1
"""


async def rehome(store: JobStore, old_id: str, new_id: str, payload: bytes) -> bool:
    """Queue `payload` as `new_id` (due now) unless that job exists; drop `old_id`'s entry
    and payload. True when the job is queued under the new ID."""
    keys = store.keys
    script = store.redis.register_script(QUEUE_AS)
    due_ms = int(utcnow().timestamp() * 1000)
    touched = [keys.arq_job_key(new_id), keys.record_key(new_id), keys.for_job(new_id).queue]
    queued = bool(await script(keys=touched, args=[payload, due_ms, new_id]))
    # The old ID's partition and the wake's (the fleet's) are other slots on a cluster: after
    # the new ID is queued, so a crash between leaves the old entry, whose next pick-up queues
    # nothing twice (ZADD NX) and drops it.
    async with store.redis.pipeline(transaction=False) as pipe:
        if queued:
            publish(pipe, keys, keys.queue_wake, new_id)
        pipe.zrem(keys.for_job(old_id).queue, old_id)
        pipe.delete(keys.arq_job_key(old_id))
        await pipe.execute()
    return queued
