"""The worker's upkeep beside its poll loop: one heartbeat for every running job's lock,
waiting for Redis at start-up, and the in-flight byte budget that sizes each claim."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from msgq.keys import Keyspace

log = structlog.get_logger("msgq.worker")


async def keep_locks_alive(
    pool: Redis, keys: Keyspace, job_tasks: dict[str, Any], lock_s: float
) -> None:
    """Every running job's in-progress lock extended in one round trip, a third of the lock's
    length apart: a killed worker's jobs are free again within `lock_s`. It must not stop
    while the worker runs (other workers would start its jobs again): every error is logged
    and the next beat tried."""
    lock_ms = int(lock_s * 1000)
    while True:
        await asyncio.sleep(lock_s / 3)
        running = list(job_tasks)
        if not running:
            continue
        try:
            async with pool.pipeline(transaction=False) as pipe:
                for job_id in running:
                    pipe.pexpire(keys.in_progress_key(job_id), lock_ms)
                await pipe.execute()
        except Exception as exc:
            log.warning("worker.heartbeat_failed", jobs=len(running), error=type(exc).__name__)


async def wait_for_redis(pool: Redis, tries: int = 30, delay_s: float = 1.0) -> None:
    """What arq's own pool did at start: a Redis still starting is waited for (`tries` pings
    `delay_s` apart; through Sentinel each ping may itself wait out a failover) rather than
    failing the worker at once."""
    for attempt in range(1, tries + 1):
        try:
            await pool.ping()
            return
        except (RedisError, OSError) as exc:
            if attempt == tries:
                raise
            log.warning(
                "worker.redis_unavailable",
                error=type(exc).__name__,
                detail=str(exc)[:200],
                retry_in_s=delay_s,
            )
            await asyncio.sleep(delay_s)


class ByteBudget:
    """The payload bytes of the jobs a worker runs, against `MSGQ_MAX_INFLIGHT_BYTES`: a vision
    job carries megabytes, so a count of jobs alone does not bound a worker's memory."""

    def __init__(self, max_bytes: int, max_jobs: int) -> None:
        self.max_bytes, self.max_jobs = max_bytes, max_jobs
        self.inflight = 0
        self._seen_bytes = self._seen_jobs = 0  # every payload so far: their mean sizes a claim

    def add(self, size: int) -> None:
        self.inflight += size
        self._seen_bytes += size
        self._seen_jobs += 1

    def remove(self, size: int) -> None:
        self.inflight -= size

    def room(self, running: int) -> int:
        """How many more jobs likely fit, judged by the payloads seen so far (one at a time
        until one is seen; one always runs, whatever its size)."""
        if self.max_bytes >= 2**62:
            return self.max_jobs
        if self._seen_jobs == 0:
            return 1 if running == 0 else 0
        mean = max(1, self._seen_bytes // self._seen_jobs)
        room = (self.max_bytes - self.inflight) // mean
        return max(room, 1) if running == 0 else max(room, 0)
