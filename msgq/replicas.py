"""Durable submits: acknowledge a job only once replicas hold it (Redis `WAIT`)."""

from __future__ import annotations

from redis.asyncio import Redis

from msgq.errors import NotReplicatedError
from msgq.keys import Keyspace


async def confirm_replicated(
    redis: Redis, keys: Keyspace, job_id: str, *, replicas: int, timeout_ms: int
) -> None:
    """Return once `replicas` replicas hold the job's record, or raise NotReplicatedError.

    WAIT counts the writes of the connection it runs on, and the job was written on another
    pooled connection; so this connection first writes a PUBLISH (replicated, keyless). The
    replication stream is ordered, so a replica that has the PUBLISH has the job. Run again
    after a failover, the same pipeline asks the new primary, where the record may be missing.
    """
    async with redis.pipeline(transaction=False) as pipe:
        pipe.publish(keys.replication_probe, job_id)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        pipe.exists(keys.record_key(job_id))
        _, acked, present = await pipe.execute()
    if not present:
        msg = (
            f"job {job_id} was lost with the Redis primary before any replica had it; "
            "submit it again (the same job ID is safe)"
        )
        raise NotReplicatedError(msg, job_id=job_id, replicas=0, wanted=replicas)
    if int(acked) < replicas:
        msg = (
            f"job {job_id} is stored on the Redis primary, but only {acked} of {replicas} "
            f"replicas confirmed it within {timeout_ms} ms: it may be lost if the primary fails; "
            "submitting it again with the same job ID is safe"
        )
        raise NotReplicatedError(msg, job_id=job_id, replicas=int(acked), wanted=replicas)
