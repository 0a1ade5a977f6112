"""Building msgq's arq worker: its Redis client and arq's options (JSON payloads, no arq-side
expiry, try limit or timeout)."""

from __future__ import annotations

import functools
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
from msgq.cluster import is_cluster_url
from msgq.keys import Keyspace
from msgq.settings import Settings
from worker.queue.claim import ClaimReplicas
from worker.queue.hooks import Hooks
from worker.queue.loop import MsgqWorker


class WorkerPool(ArqRedis):
    """arq's client, whose view of "the queue" covers every partition: arq counts the queue
    named `queue_name` (the deployment's) to end a `--burst` run and in its health check, and
    with partitions the jobs wait in each partition's queue instead."""

    keyspace: Keyspace | None = None  # (not `keys`: that is Redis's KEYS command)

    async def zcard(self, name: Any) -> int:
        keys = self.keyspace
        if keys is None or keys.partitions == 1 or name != keys.queue:
            return int(await super().zcard(name))
        async with self.pipeline(transaction=False) as pipe:  # a round trip (a master each)
            for part in keys.parts:
                pipe.zcard(part.queue)
            return sum(int(n) for n in await pipe.execute())


def worker_pool(
    redis_url: str, *, keys: Keyspace, max_job_bytes: int, failover_wait_s: float
) -> WorkerPool:
    """The worker's client, made by msgq rather than arq: arq's own Sentinel pool passes no
    retry settings, so a failover would fail commands in flight, both of arq's pools take
    redis-py's pool-wide lock on every command (`failover.NoLockOnCheckout`), and arq has no
    Redis Cluster client (msgq's talks to the master serving the deployment's slot)."""
    if connections.is_sentinel(redis_url) or is_cluster_url(redis_url):
        pool = connections.connect(
            redis_url, redis_class=WorkerPool, failover_wait_s=failover_wait_s, keys=keys
        )
    else:
        rs = redis_settings(redis_url)
        pool = connections.connect(
            redis_url,
            redis_class=WorkerPool,
            socket_connect_timeout=rs.conn_timeout,
            retry=rs.retry,
            retry_on_error=rs.retry_on_error,
        )
    pool.job_serializer = serialize
    pool.job_deserializer = functools.partial(deserialize, max_bytes=max_job_bytes)
    pool.default_queue_name = keys.queue
    pool.keyspace = keys
    pool.expires_extra_ms = NO_EXPIRY_MS
    return pool


def build_worker(
    settings: Settings,
    hooks: Hooks,
    *,
    burst: bool = False,
    handle_signals: bool = True,
    **overrides: Any,
) -> MsgqWorker:
    """An arq worker running `hooks.run` for every msgq job, with JSON payloads and no arq-side
    expiry, try limit or timeout (msgq's task and records own all three). `overrides`: arq's own
    options, for tests and benchmarks."""
    deserializer = functools.partial(deserialize, max_bytes=settings.max_job_bytes)
    options: dict[str, Any] = {
        "functions": [func(hooks.run, name=TASK_NAME, max_tries=ARQ_MAX_TRIES, keep_result=0)],  # type: ignore[arg-type]  # registered for its name: MsgqWorker calls hooks.run itself
        "redis_settings": redis_settings(settings.redis_url),
        "redis_pool": worker_pool(
            settings.redis_url,
            keys=settings.keys,
            max_job_bytes=settings.max_job_bytes,
            failover_wait_s=settings.redis_failover_wait_s,
        ),
        "on_startup": hooks.startup,
        "on_shutdown": hooks.shutdown,
        "ctx": {"settings": settings},
        "burst": burst,
        "handle_signals": handle_signals,
        "job_completion_wait": settings.shutdown_grace_s,
        "max_jobs": settings.max_jobs,
        "job_timeout": UNREACHABLE_TIMEOUT_S,
        "keep_result": 0,
        "poll_delay": settings.poll_delay_s,
        "max_tries": ARQ_MAX_TRIES,
        "allow_abort_jobs": True,
        "job_serializer": serialize,
        "job_deserializer": deserializer,
        "expires_extra_ms": NO_EXPIRY_MS,
        "log_results": False,
        "health_check_interval": 10,
    }
    options.update(overrides)
    return MsgqWorker(
        lock_s=settings.lock_s,
        hooks=hooks,
        keys=settings.keys,
        max_inflight_bytes=settings.max_inflight_bytes,
        claim_replicas=ClaimReplicas(
            settings.submit_min_replicas, settings.submit_replica_timeout_ms
        )
        if settings.submit_min_replicas
        else None,
        **options,
    )
