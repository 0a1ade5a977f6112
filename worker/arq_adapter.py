"""Every use of arq, the queue library, in one module: replacing arq means rewriting this file.

What msgq takes from arq, and what a replacement must provide:
- the job payload format (`t, f, a, k, et` as JSON) and the key it is stored under, plus the
  queue ZSET scored by run-at milliseconds (raw-Redis producers write exactly these);
- the in-progress lock key a worker holds while it runs a job, and its length;
- `Defer`: raised by a task to run it again later without holding a worker slot;
- aborting a running job (a ZSET of job IDs the worker polls);
- the worker loop itself (`MsgqWorker`), its health-check key, and `finish_failed_job` for
  payloads arq refuses before msgq's task runs.
arq is maintenance-only upstream (arq #510) and pins redis-py < 6; see the README.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from arq import Retry, Worker, func
from arq.connections import ArqRedis, RedisSettings
from arq.constants import abort_jobs_ss, health_check_key_suffix, in_progress_key_prefix
from arq.constants import job_key_prefix as _job_key_prefix
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from worker import connections

log = structlog.get_logger("msgq.worker")

JOB_KEY_PREFIX: str = _job_key_prefix
IN_PROGRESS_KEY_PREFIX: str = in_progress_key_prefix
ABORT_KEY: str = abort_jobs_ss
HEALTH_CHECK_SUFFIX: str = health_check_key_suffix
TASK_NAME = "run_message"
UNDECODABLE_KEY = "_undecodable"

# arq fails a job on its own after max_tries pickups; msgq counts API calls in the record instead,
# so a restart or deploy never uses up a job's attempts.
ARQ_MAX_TRIES = 1_000_000
# A job waiting in a long backlog must never silently expire: only its own deadline ends it.
NO_EXPIRY_MS = 100 * 365 * 24 * 3600 * 1000
# arq's own job timeout deletes the job and its queue entry without our record being finished.
# msgq bounds every wait and call itself, so arq's timeout must never be reached.
UNREACHABLE_TIMEOUT_S = 10 * 365 * 24 * 3600

Defer = Retry  # raise Defer(defer=seconds): the job runs again later; no worker slot is held


# ---------------------------------------------------------------- the payload format (JSON)


def _default(value: Any) -> Any:
    # arq stores exceptions in failure results; keep their type and message, nothing executable.
    if isinstance(value, BaseException):
        return {"exception": type(value).__name__, "message": str(value)}
    return str(value)


def serialize(obj: Any) -> bytes:
    """Raises orjson.JSONEncodeError for integers beyond 64 bits (callers refuse those jobs)."""
    return orjson.dumps(obj, default=_default)


def deserialize(data: bytes, *, max_bytes: int = 64 * 1024 * 1024) -> dict[str, Any]:
    """Never raises: a payload that is not a JSON job becomes a job that the task fails cleanly.

    arq would otherwise fail such a job without our record ever being written, and a poller
    would wait forever on `queued`. (msgq never accepts pickle: it would run code from Redis.)
    """
    if len(data) > max_bytes:
        return _undecodable(f"job payload is {len(data)} bytes; the limit is {max_bytes}")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return _undecodable("job payload is not valid JSON (msgq never accepts pickle)")
    if not isinstance(obj, dict):
        return _undecodable("job payload must be a JSON object")
    if "t" not in obj and "r" not in obj:
        return _undecodable("job payload has no arq fields (t, f, a, k, et)")
    if obj.get("f") != TASK_NAME and "r" not in obj:
        return _undecodable(f"unknown job function {str(obj.get('f'))[:64]!r}")
    if not isinstance(obj.get("k", {}), dict) or not isinstance(obj.get("a", []), list):
        return _undecodable("job payload: 'a' must be a list and 'k' an object")
    return obj


def _undecodable(reason: str) -> dict[str, Any]:
    return {
        "t": 1,
        "f": TASK_NAME,
        "a": [],
        "k": {UNDECODABLE_KEY: reason},
        "et": int(time.time() * 1000),
    }


def job_payload(kwargs: dict[str, Any], enqueued_ms: int) -> bytes:
    """The stored job: what a raw-Redis producer writes under `arq:job:<id>` (see README)."""
    return serialize({"t": 1, "f": TASK_NAME, "a": [], "k": kwargs, "et": enqueued_ms})


def abort_request(job_id: str) -> tuple[str, dict[str, int]]:
    """(key, ZADD mapping) that asks the worker running `job_id` to abort it."""
    return ABORT_KEY, {job_id: int(time.time() * 1000)}


# ---------------------------------------------------------------- the worker


def redis_settings(redis_url: str) -> RedisSettings:
    """arq's connection settings for a msgq Redis URL, `redis+sentinel://` included."""
    if connections.is_sentinel(redis_url):
        target = connections.parse_sentinel_url(redis_url)
        return RedisSettings(
            host=list(target.sentinels),
            sentinel=True,
            sentinel_master=target.service,
            database=target.db,
            username=target.username,
            password=target.password,
            ssl=target.ssl,
            conn_retries=30,
        )
    rs = RedisSettings.from_dsn(redis_url)
    rs.conn_retries = 30  # reconnect with backoff across a Redis restart rather than exit
    # After a restart every pooled connection is dead: retry a command on a fresh one.
    rs.retry_on_error = [RedisConnectionError]
    rs.retry = RedisRetry(ExponentialBackoff(cap=1.0, base=0.05), retries=3)
    return rs


def sentinel_pool(
    redis_url: str, *, queue_name: str, max_job_bytes: int, failover_wait_s: float
) -> ArqRedis | None:
    """For a Sentinel URL, the worker's pool, made by msgq rather than arq: arq's own Sentinel
    pool passes no retry settings, so a failover would fail commands in flight."""
    if not connections.is_sentinel(redis_url):
        return None
    pool = connections.connect(redis_url, redis_class=ArqRedis, failover_wait_s=failover_wait_s)
    pool.job_serializer = serialize
    pool.job_deserializer = functools.partial(deserialize, max_bytes=max_job_bytes)
    pool.default_queue_name = queue_name
    pool.expires_extra_ms = NO_EXPIRY_MS
    return pool


# KEYS: the job's in-progress lock, the queue. ARGV: job id, now ms, lock ms. The job's score
# when this worker now holds it; nil when another does, or it is gone or not yet due.
CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return nil end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return nil end
redis.call('PSETEX', KEYS[1], ARGV[3], '1')
return score
"""

Refused = Callable[[dict[str, Any], str, bytes | None], Awaitable[None]]


class MsgqWorker(Worker):
    """arq's Worker with a short in-progress lock (the task's heartbeat keeps it alive while a
    job runs) and a poll loop that rides out a Redis outage instead of exiting."""

    def __init__(self, *args: Any, lock_s: float, on_refused: Refused, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_progress_timeout_s = lock_s
        self._outage_s = 0.0
        self._on_refused = on_refused
        self._claim: Any = None  # registered on the pool once arq has made it

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

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's pick-up, with its four round trips (WATCH, EXISTS, ZSCORE, MULTI/EXEC) made one
        script that claims the job only if no one holds it and it is due. The slot (arq's
        semaphore and counter) is given back whenever the job is not started, Redis failing
        mid-pick-up included: arq's own loop kept it for good then, one slot fewer per outage."""
        for job_id_b in job_ids:
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            job_id = job_id_b.decode()
            if self._claim is None:
                self._claim = self.pool.register_script(CLAIM)
            try:
                score = await self._claim(
                    keys=[IN_PROGRESS_KEY_PREFIX + job_id, self.queue_name],
                    args=[job_id, int(time.time() * 1000), int(self.in_progress_timeout_s * 1000)],
                )
            except (RedisError, OSError):
                self._give_back_slot()
                raise
            if score is None:  # running elsewhere, finished, or re-deferred by another worker
                self._give_back_slot()
                continue
            task = self.loop.create_task(self.run_job(job_id, int(float(score))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    def _give_back_slot(self) -> None:
        self.job_counter -= 1
        self.sem.release()

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
        await self._on_refused(self.ctx, job_id, result_data)


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
        "redis_pool": sentinel_pool(
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
    return MsgqWorker(lock_s=lock_s, on_refused=on_refused, **options)
