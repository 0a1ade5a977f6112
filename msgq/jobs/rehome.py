"""Moving a raw producer's job to the ID it belongs under (`tenant:id`), so a job that names a
tenant is one job everywhere: scheduled, billed, stored and read as that tenant's."""

from __future__ import annotations

from msgq.channels import publish
from msgq.jobs.records import utcnow
from msgq.jobs.store import JobStore


async def rehome(store: JobStore, old_id: str, new_id: str, payload: bytes) -> bool:
    """Queue `payload` as `new_id` (due now) unless that job exists; drop `old_id`'s entry
    and payload. True when the job was queued under the new ID."""
    keys = store.keys
    async with store.redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.arq_job_key(new_id), payload, nx=True)
        pipe.exists(keys.record_key(new_id))
        created, existing = (await pipe.execute())[:2]
    # Not one transaction: the new ID's partition, the old one's and the wake's (the fleet's)
    # are three slots on a cluster. Queued under the new ID first, then the old dropped: a crash
    # between leaves the old entry, whose next pick-up finds the new ID taken and only drops it.
    async with store.redis.pipeline(transaction=False) as pipe:
        if created and not existing:
            due_ms = int(utcnow().timestamp() * 1000)
            pipe.zadd(keys.for_job(new_id).queue, {new_id: due_ms}, nx=True)
            publish(pipe, keys, keys.queue_wake, new_id)
        elif created:  # that job already ended: nothing to queue
            pipe.delete(keys.arq_job_key(new_id))
        pipe.zrem(keys.for_job(old_id).queue, old_id)
        pipe.delete(keys.arq_job_key(old_id))
        await pipe.execute()
    return bool(created and not existing)
