"""The msgq worker process: msgq's task and lifecycle hooks on the queue library's worker loop."""

from __future__ import annotations

from typing import Any

from msgq.settings import Settings
from worker.job import admission
from worker.job import task as tasks
from worker.queue.build import build_worker as _build
from worker.queue.loop import MsgqWorker

__all__ = ["MsgqWorker", "build_worker"]


def build_worker(
    settings: Settings, *, burst: bool = False, handle_signals: bool = True, **overrides: Any
) -> MsgqWorker:
    return _build(
        task=tasks.run_message,
        on_startup=tasks.startup,
        on_shutdown=tasks.shutdown,
        on_refused=tasks.on_refused,
        ctx={"settings": settings},
        redis_url=settings.redis_url,
        queue_name=settings.queue_name,
        max_jobs=settings.max_jobs,
        lock_s=settings.lock_s,
        poll_delay_s=settings.poll_delay_s,
        shutdown_grace_s=settings.shutdown_grace_s,
        max_job_bytes=settings.max_job_bytes,
        redis_failover_wait_s=settings.redis_failover_wait_s,
        prefetch=admission.prefetch_reads,
        max_inflight_bytes=settings.max_inflight_bytes,
        burst=burst,
        handle_signals=handle_signals,
        **overrides,
    )
