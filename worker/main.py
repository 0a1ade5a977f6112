"""Builds the arq Worker: JSON serializer, short heartbeat lock, no arq-side expiry or try limit."""

from __future__ import annotations

from typing import Any

from arq import Worker, func
from arq.connections import RedisSettings

from worker import tasks
from worker.serialization import TASK_NAME, deserialize, serialize
from worker.settings import Settings

# arq fails a job on its own after max_tries pickups; msgq counts API calls in the record instead,
# so a restart or deploy never uses up a job's attempts.
ARQ_MAX_TRIES = 1_000_000
# A job waiting in a long backlog must never silently expire: only its own deadline ends it.
NO_EXPIRY_MS = 100 * 365 * 24 * 3600 * 1000


def redis_settings(settings: Settings) -> RedisSettings:
    rs = RedisSettings.from_dsn(settings.redis_url)
    rs.conn_retries = 30  # reconnect with backoff across a Redis restart rather than exit
    return rs


class MsgqWorker(Worker):
    """arq's Worker with a short in-progress lock; tasks.heartbeat keeps it alive while jobs run."""

    def __init__(self, *args: Any, lock_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_progress_timeout_s = lock_s


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
        "job_deserializer": deserialize,
        "expires_extra_ms": NO_EXPIRY_MS,
        "log_results": False,
        "health_check_interval": 10,
    }
    options.update(overrides)
    return MsgqWorker(lock_s=settings.lock_s, **options)
