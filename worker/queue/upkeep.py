"""The worker's upkeep beside its poll loop: one heartbeat for every running job's lock,
waiting for Redis at start-up, and the in-flight byte budget that sizes each claim."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from arq.jobs import serialize_result
from arq.utils import timestamp_ms
from redis.asyncio import Redis
from redis.exceptions import RedisError

from msgq.arq_format import serialize
from msgq.keys import Keyspace
from msgq.script_calls import run_each
from worker.queue.claim import Claim
from worker.queue.poll import by_partition

log = structlog.get_logger("msgq.worker")


async def keep_locks_alive(
    pool: Redis, keys: Keyspace, job_tasks: dict[str, Any], lock_s: float, token: str
) -> None:
    """Every running job's in-progress lock extended in one round trip, a third of the lock's
    length apart: a killed worker's jobs are free again within `lock_s`. It must not stop
    while the worker runs (other workers would start its jobs again): every error is logged
    and the next beat tried, which then also takes back the locks that lapsed meanwhile."""
    retake = False
    while True:
        await asyncio.sleep(lock_s / 3)
        running = list(job_tasks)
        if not running:
            continue
        try:
            await beat(pool, keys, running, lock_s, token, retake=retake)
            retake = False
        except Exception as exc:
            retake = True
            log.warning("worker.heartbeat_failed", jobs=len(running), error=type(exc).__name__)


# KEYS: a partition's queue, then each running job's lock. ARGV: this worker's token, lock ms,
# the score a running job takes (its lock's expiry), retake (1/0), then the jobs' IDs. A lock
# this worker holds is extended and its job's place in the queue moved on with it; one that
# lapsed is taken back when `retake` (after Redis was away) unless another worker took the job;
# a lock another worker holds, or gone (the job ended, or was deferred or handed back, with its
# new place set), is left alone: a beat that lands just after a deferral must not move it.
BEAT = """
local token, lock_ms, due, retake = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
for n = 2, #KEYS do
  local lock = redis.call('GET', KEYS[n])
  if lock == token then
    redis.call('PEXPIRE', KEYS[n], lock_ms)
  elseif not lock and retake then
    redis.call('SET', KEYS[n], token, 'PX', lock_ms)
    lock = token
  end
  if lock == token then redis.call('ZADD', KEYS[1], 'XX', 'GT', due, ARGV[n + 3]) end
end
return 1
"""


async def beat(
    pool: Redis,
    keys: Keyspace,
    running: list[str],
    lock_s: float,
    token: str,
    *,
    retake: bool = False,
) -> None:
    """Extend the locks of `running` jobs this worker holds, and their places in the queue
    with them (CLAIM scores a running job at its lock's expiry): one script a partition, all
    in one round trip. `retake`, after Redis was away: a lock that lapsed meanwhile is set
    again with this worker's token (unless another worker took the job first), since its call
    may still be in flight or its answer held (`worker.hold`); not on every beat, where it
    would set a lock again for a job whose terminal write just ended it."""
    lock_ms = int(lock_s * 1000)
    due_ms = int(time.time() * 1000) + lock_ms  # a running job is due again as its lock lapses
    calls = []
    for ids in by_partition(keys, running).values():
        locks = [keys.in_progress_key(job_id) for job_id in ids]
        head = [token, lock_ms, due_ms, int(retake)]
        calls.append(([keys.for_job(ids[0]).queue, *locks], [*head, *ids]))
    await run_each(pool, pool.register_script(BEAT), calls)


OUTAGE_RETRY_MAX_S = 5.0  # the poll loop's longest wait between tries while Redis is away
# After an outage that let locks lapse: every worker riding it out has seen Redis again and
# taken back its running jobs' locks, and held answers are stored, before any claims.
SETTLE_AFTER_OUTAGE_S = OUTAGE_RETRY_MAX_S + 1.0


class Outage:
    """The poll loop's Redis outage: its backoff, and what it does once Redis answers again."""

    def __init__(self, settle_s: float) -> None:
        self.settle_s = settle_s
        self.retry_s = 0.0  # the current wait between tries
        self.began: float | None = None  # when (monotonic); None: Redis answers

    def failed(self) -> float:
        """A poll failed: how long to wait before the next (0.1 s doubling to 5 s)."""
        self.retry_s = min(max(self.retry_s * 2, 0.1), OUTAGE_RETRY_MAX_S)
        if self.began is None:
            self.began = time.monotonic()
        return self.retry_s

    async def ended(
        self, pool: Redis, keys: Keyspace, running: list[str], lock_s: float, token: str
    ) -> None:
        """Redis answers again (else this raises). The worker takes back the locks of its own
        running jobs that lapsed in the outage (a call may still be in flight, an answer held:
        `worker.hold`). If the outage was long enough for locks to lapse, it then waits
        `settle_s` before claiming: longer than any other worker riding out the same outage
        takes to see Redis again and take back its own, and than a held answer takes to be
        stored, so no job still running elsewhere is claimed and sent again."""
        await pool.ping()
        lasted_s = time.monotonic() - (self.began or time.monotonic())
        if running:
            await beat(pool, keys, running, lock_s, token, retake=True)
        # A lock lapses only after `lock_s` without a beat, and beats are a third of it apart:
        # a shorter outage left every lock in place.
        settle_s = self.settle_s if lasted_s >= lock_s * 2 / 3 else 0.0
        log.info("worker.redis_reconnected", outage_s=round(lasted_s, 1), settle_s=settle_s)
        self.retry_s, self.began = 0.0, None
        await asyncio.sleep(settle_s)


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

    def add(self, size: int) -> bool:
        """Count a payload in; True for the first one seen (room was 1 until then)."""
        self.inflight += size
        self._seen_bytes += size
        self._seen_jobs += 1
        return self._seen_jobs == 1 and self.max_bytes < 2**62

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


def refusal(
    job_id: str, claim: Claim, failure: BaseException, name: str, enqueued_ms: int, queue: str
) -> bytes | None:
    """arq's result record of a job it refused before the task ran (what `on_refused` reads)."""
    now_ms = timestamp_ms()
    return serialize_result(
        function=name,
        args=(),
        kwargs={},
        job_try=claim.job_try,
        enqueue_time_ms=enqueued_ms,
        success=False,
        result=failure,
        start_ms=now_ms,
        finished_ms=now_ms,
        ref=f"{job_id}:{name}",
        serializer=serialize,
        queue_name=queue,
        job_id=job_id,
    )
