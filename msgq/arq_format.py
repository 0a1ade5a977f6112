"""arq's formats, the half of arq that producers, the store and the keys share; the worker half
(the loop, the claim script) is `worker/queue/`. Replacing arq means rewriting those.

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

import time
from typing import Any

import orjson
import structlog
from arq import Retry
from arq.connections import RedisSettings
from arq.constants import (
    abort_jobs_ss,
    health_check_key_suffix,
    in_progress_key_prefix,
    retry_key_prefix,
)
from arq.constants import job_key_prefix as _job_key_prefix
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from msgq import connections
from msgq.cluster import is_cluster_url, parse_cluster_url

log = structlog.get_logger("msgq.worker")

JOB_KEY_PREFIX: str = _job_key_prefix
IN_PROGRESS_KEY_PREFIX: str = in_progress_key_prefix
ABORT_KEY: str = abort_jobs_ss
HEALTH_CHECK_SUFFIX: str = health_check_key_suffix
RETRY_KEY_PREFIX: str = retry_key_prefix
TASK_NAME = "run_message"
UNDECODABLE_KEY = "_undecodable"
MAX_TRY = 10**9
MAX_ENQUEUED_MS = 253_402_300_799_000  # 9999-12-31T23:59:59Z, the last time datetime holds

# arq fails a job on its own after max_tries pickups; msgq counts API calls in the record instead,
# so a restart or deploy never uses up a job's attempts.
ARQ_MAX_TRIES = 1_000_000
# A job waiting in a long backlog must never silently expire: only its own deadline ends it.
NO_EXPIRY_MS = 100 * 365 * 24 * 3600 * 1000
# arq's own job timeout deletes the job and its queue entry without our record being finished.
# msgq bounds every wait and call itself, so arq's timeout must never be reached.
UNREACHABLE_TIMEOUT_S = 10 * 365 * 24 * 3600

Defer = Retry  # raise Defer(defer=seconds): the job runs again later; no worker slot is held


def deferred_s(exc: BaseException | None) -> float | None:
    """How long until a deferred job runs again, when `exc` is a `Defer`; else None."""
    if not isinstance(exc, Defer):
        return None
    return (exc.defer_score or 0) / 1000


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
    if "r" not in obj and not (_is_number(obj.get("t", 1)) and _is_number(obj.get("et", 0))):
        return _undecodable("job payload: 't' and 'et' must be numbers")
    if "r" not in obj and not (
        0 <= obj.get("t", 1) <= MAX_TRY and 0 <= obj.get("et", 0) <= MAX_ENQUEUED_MS
    ):
        # Out of range, the time cannot be converted (datetime ends at year 9999): converting it
        # outside the task failed the job's bookkeeping on every pick-up, and it never ended.
        return _undecodable(
            f"job payload: 't' must be 0-{MAX_TRY} and 'et' 0-{MAX_ENQUEUED_MS} (ms since 1970)"
        )
    return obj


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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


def abort_request(abort_key: str, job_id: str) -> tuple[str, dict[str, int]]:
    """(key, ZADD mapping) that asks the worker running `job_id` to abort it; `abort_key` is
    the deployment's abort set (`Keyspace.abort_key`)."""
    return abort_key, {job_id: int(time.time() * 1000)}


# ---------------------------------------------------------------- connection settings


def redis_settings(redis_url: str) -> RedisSettings:
    """arq's connection settings for a msgq Redis URL, `redis+sentinel://` included. For a
    cluster, only what arq shows (the first seed): msgq hands arq its own client."""
    if is_cluster_url(redis_url):
        host, port = parse_cluster_url(redis_url).seeds[0]
        return RedisSettings(host=host, port=port, conn_retries=30)
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
