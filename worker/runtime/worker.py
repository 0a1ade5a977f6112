"""Builds the arq Worker: JSON serializer, short heartbeat lock, no arq-side expiry or try limit."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import structlog
from arq import Worker, func
from arq.connections import RedisSettings
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from worker.runtime import tasks
from worker.serialization import TASK_NAME, deserialize, serialize
from worker.settings import Settings

log = structlog.get_logger("msgq.worker")

# arq fails a job on its own after max_tries pickups; msgq counts API calls in the record instead,
# so a restart or deploy never uses up a job's attempts.
ARQ_MAX_TRIES = 1_000_000
# A job waiting in a long backlog must never silently expire: only its own deadline ends it.
NO_EXPIRY_MS = 100 * 365 * 24 * 3600 * 1000


def redis_settings(settings: Settings) -> RedisSettings:
    rs = RedisSettings.from_dsn(settings.redis_url)
    rs.conn_retries = 30  # reconnect with backoff across a Redis restart rather than exit
    # After a restart every pooled connection is dead: retry a command on a fresh one.
    rs.retry_on_error = [RedisConnectionError]
    rs.retry = RedisRetry(ExponentialBackoff(cap=1.0, base=0.05), retries=3)
    return rs


class MsgqWorker(Worker):
    """arq's Worker with a short in-progress lock (tasks.heartbeat keeps it alive while jobs run)
    and a poll loop that rides out a Redis outage instead of exiting."""

    def __init__(self, *args: Any, lock_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_progress_timeout_s = lock_s
        self._outage_s = 0.0

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except (RedisError, OSError) as exc:
            # redis-py reconnects on the next command; wait with backoff, then poll again.
            self._outage_s = min(max(self._outage_s * 2, 0.1), 5.0)
            # Drop the idle (stale) connections at once; in-use ones belong to running jobs, and
            # closing them underneath a pending read could leave it waiting forever.
            await self.pool.connection_pool.disconnect(inuse_connections=False)
            log.warning(
                "worker.redis_unavailable",
                error=type(exc).__name__,
                detail=str(exc)[:200],
                retry_in_s=self._outage_s,
            )
            await asyncio.sleep(self._outage_s)
            return
        if self._outage_s:
            log.info("worker.redis_reconnected")
            self._outage_s = 0.0

    async def run_job(self, job_id: str, score: int) -> None:
        """arq's bookkeeping around a job (pick-up, finish) can hit a Redis outage. Left as a
        task exception it would be re-raised later, once per poll and again at shutdown; the
        job itself is safe: still queued, its lock lapses, and the rerun sees its record."""
        try:
            await super().run_job(job_id, score)
        except (RedisError, OSError) as exc:
            log.warning("job.bookkeeping_failed", job_id=job_id, error=type(exc).__name__)

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        """arq failed a job before our task ran (empty payload, "expired", max tries): record
        it too, or a poller would wait on `queued` forever."""
        await super().finish_failed_job(job_id, result_data)
        deps = self.ctx.get("msgq")
        if deps is not None:
            await tasks.record_refused(deps, job_id, result_data)


def build_worker(
    settings: Settings, *, burst: bool = False, handle_signals: bool = True, **overrides: Any
) -> MsgqWorker:
    options: dict[str, Any] = {
        "functions": [
            func(tasks.run_message, name=TASK_NAME, max_tries=ARQ_MAX_TRIES, keep_result=0)
        ],
        "queue_name": settings.queue_name,
        "redis_settings": redis_settings(settings),
        "on_startup": tasks.startup,
        "on_shutdown": tasks.shutdown,
        "ctx": {"settings": settings},
        "burst": burst,
        "handle_signals": handle_signals,
        "job_completion_wait": settings.shutdown_grace_s,
        "max_jobs": settings.max_jobs,
        # arq's own timeout is a backstop; the task times out its attempt first and records it.
        "job_timeout": settings.job_timeout_s + 30,
        "keep_result": 0,
        "poll_delay": settings.poll_delay_s,
        "max_tries": ARQ_MAX_TRIES,
        "allow_abort_jobs": True,
        "job_serializer": serialize,
        "job_deserializer": functools.partial(deserialize, max_bytes=settings.max_job_bytes),
        "expires_extra_ms": NO_EXPIRY_MS,
        "log_results": False,
        "health_check_interval": 10,
    }
    options.update(overrides)
    return MsgqWorker(lock_s=settings.lock_s, **options)
