"""Building msgq's arq worker: its Redis client and arq's options (JSON payloads, no arq-side
expiry, try limit or timeout)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from arq import func
from arq.connections import ArqRedis

from msgq import connections
from msgq.arq_format import (
    ARQ_MAX_TRIES,
    NO_EXPIRY_MS,
    TASK_NAME,
    UNREACHABLE_TIMEOUT_S,
    deserialize,
    redis_settings,
    serialize,
)
from worker.queue.claim import (
    Prefetch,
    Refused,
)
from worker.queue.loop import MsgqWorker


def worker_pool(
    redis_url: str, *, queue_name: str, max_job_bytes: int, failover_wait_s: float
) -> ArqRedis:
    """The worker's client, made by msgq rather than arq: arq's own Sentinel pool passes no
    retry settings, so a failover would fail commands in flight, and both of arq's pools take
    redis-py's pool-wide lock on every command (`connections.NoLockOnCheckout`)."""
    if connections.is_sentinel(redis_url):
        pool = connections.connect(redis_url, redis_class=ArqRedis, failover_wait_s=failover_wait_s)
    else:
        rs = redis_settings(redis_url)
        pool = connections.connect(
            redis_url,
            redis_class=ArqRedis,
            socket_connect_timeout=rs.conn_timeout,
            retry=rs.retry,
            retry_on_error=rs.retry_on_error,
        )
    pool.job_serializer = serialize
    pool.job_deserializer = functools.partial(deserialize, max_bytes=max_job_bytes)
    pool.default_queue_name = queue_name
    pool.expires_extra_ms = NO_EXPIRY_MS
    return pool


def build_worker(
    *,
    task: Callable[..., Awaitable[None]],
    on_startup: Callable[[dict[str, Any]], Awaitable[None]],
    on_shutdown: Callable[[dict[str, Any]], Awaitable[None]],
    on_refused: Refused,
    ctx: dict[str, Any],
    redis_url: str,
    queue_name: str,
    max_jobs: int,
    lock_s: float,
    poll_delay_s: float,
    shutdown_grace_s: int,
    max_job_bytes: int,
    redis_failover_wait_s: float = connections.DEFAULT_FAILOVER_WAIT_S,
    prefetch: Prefetch | None = None,
    max_inflight_bytes: int = 2**62,
    burst: bool = False,
    handle_signals: bool = True,
    **overrides: Any,
) -> MsgqWorker:
    """An arq worker running `task` for every msgq job, with JSON payloads and no arq-side
    expiry, try limit or timeout (msgq's task and records own all three)."""
    options: dict[str, Any] = {
        "functions": [func(task, name=TASK_NAME, max_tries=ARQ_MAX_TRIES, keep_result=0)],  # type: ignore[arg-type]  # arq types its coroutine protocol narrowly
        "queue_name": queue_name,
        "redis_settings": redis_settings(redis_url),
        "redis_pool": worker_pool(
            redis_url,
            queue_name=queue_name,
            max_job_bytes=max_job_bytes,
            failover_wait_s=redis_failover_wait_s,
        ),
        "on_startup": on_startup,
        "on_shutdown": on_shutdown,
        "ctx": ctx,
        "burst": burst,
        "handle_signals": handle_signals,
        "job_completion_wait": shutdown_grace_s,
        "max_jobs": max_jobs,
        "job_timeout": UNREACHABLE_TIMEOUT_S,
        "keep_result": 0,
        "poll_delay": poll_delay_s,
        "max_tries": ARQ_MAX_TRIES,
        "allow_abort_jobs": True,
        "job_serializer": serialize,
        "job_deserializer": functools.partial(deserialize, max_bytes=max_job_bytes),
        "expires_extra_ms": NO_EXPIRY_MS,
        "log_results": False,
        "health_check_interval": 10,
    }
    options.update(overrides)
    return MsgqWorker(
        lock_s=lock_s,
        on_refused=on_refused,
        prefetch=prefetch,
        max_inflight_bytes=max_inflight_bytes,
        **options,
    )
