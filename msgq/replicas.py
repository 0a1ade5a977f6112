"""Durable submits: acknowledge a job only once replicas hold it (Redis `WAIT`)."""

from __future__ import annotations

import orjson
from redis.asyncio import Redis

from msgq.errors import NotReplicatedError
from msgq.keys import Keyspace
from schemas import TERMINAL

PROBE_TTL_MS = 60_000  # the probe key is only ever a write to wait for
TERMINAL_VALUES = frozenset(status.value for status in TERMINAL)


async def confirm_replicated(
    redis: Redis, keys: Keyspace, job_id: str, *, replicas: int, timeout_ms: int
) -> None:
    """Return once `replicas` replicas hold the job's record, or raise NotReplicatedError.

    WAIT counts the writes of the connection it runs on, and the job was written on another
    pooled connection; so this connection first writes a small key of its own. The replication
    stream is ordered, so a replica that has that write has the job. (Not a PUBLISH: on a Redis
    Cluster a PUBLISH goes over the cluster bus, not the replication stream, and WAIT would
    count nothing.) Run again after a failover, the same pipeline asks the new primary, where
    the record may be missing.
    """
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(keys.for_job(job_id).replication_probe, job_id, px=PROBE_TTL_MS)  # its node
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


async def replicas_and_terminal(
    redis: Redis, keys: Keyspace, job_id: str, *, replicas: int, timeout_ms: int
) -> tuple[int, bool]:
    """After a terminal write: how many replicas hold the primary's writes so far (WAIT, after a
    probe write of this connection's own, as above), and whether the job's record on the primary
    that answers is terminal. A write acknowledged by a primary that died before any replica had
    it is gone from the promoted one: the record there is not terminal, and the caller writes
    it again before the job's lock lapses (else another worker would send the job again)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(keys.for_job(job_id).replication_probe, job_id, px=PROBE_TTL_MS)  # its node
        pipe.execute_command("WAIT", replicas, timeout_ms)
        pipe.get(keys.record_key(job_id))
        _, acked, raw = await pipe.execute()
    terminal = raw is not None and orjson.loads(raw).get("status") in TERMINAL_VALUES
    return int(acked), terminal
