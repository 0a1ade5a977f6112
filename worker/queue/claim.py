"""The claim script (every free slot's job in one round trip) and `QueueJob`, the handle of the
job a task runs, so a terminal record can end the job in arq's queue in the same write."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from redis.exceptions import NoScriptError

from msgq.keys import Keyspace
from msgq.script_calls import sort_answers

log = structlog.get_logger("msgq.worker")

# Claims several jobs in one round trip. KEYS: the queue, the abort ZSET, then for each job its
# in-progress lock, payload and try counter followed by the caller's prefetch keys. ARGV: now ms,
# lock ms, this worker's token, the number of prefetch reads per job and each read (GET, GETDEL
# or EXISTS), then the job IDs. One reply per job: nil when another worker holds it, or it is
# gone or not yet due; {false, error} when a key of the job could not be read (e.g. WRONGTYPE:
# that job is refused, the rest of the batch is not held up); else {score, payload (nil when
# gone), try, aborted (0/1), prefetched...}. A lock already holding this worker's token is a
# re-sent claim whose reply was lost: the job is handed over again, its try not counted twice.
# A claimed job stays in the queue (a dead worker's job is found again) but is scored at its
# lock's expiry, and each heartbeat moves it on with the lock (`worker.queue.upkeep.beat`): the
# due range holds waiting jobs, not the fleet's running ones, so a poll reads the head of the
# queue and nothing more (`worker.queue.poll`). A job that lost its worker comes due as its lock
# lapses. One found held while due is moved to its lock's expiry.
CLAIM = """
local reads = tonumber(ARGV[4])
local per_job = 3 + reads
local first_id = 5 + reads
local function claim(id, base)
  local lock = redis.call('GET', KEYS[base + 1])
  local score = redis.call('ZSCORE', KEYS[1], id)
  if lock and lock ~= ARGV[3] then
    -- Held, yet due (a heartbeat late, a worker that does not re-score): out of the due
    -- range until its lock lapses, so it does not stand before the waiting jobs.
    local ttl = redis.call('PTTL', KEYS[base + 1])
    if score and ttl > 0 and tonumber(score) <= tonumber(ARGV[1]) then
      redis.call('ZADD', KEYS[1], 'XX', tonumber(ARGV[1]) + ttl, id)
    end
    return false
  end
  if not score or (not lock and tonumber(score) > tonumber(ARGV[1])) then return false end
  redis.call('SET', KEYS[base + 1], ARGV[3], 'PX', ARGV[2])
  redis.call('ZADD', KEYS[1], 'XX', tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
  local try
  if lock then
    try = tonumber(redis.call('GET', KEYS[base + 3]) or '1')
  else
    try = redis.call('INCR', KEYS[base + 3])
  end
  redis.call('EXPIRE', KEYS[base + 3], 88400)
  local out = {score, redis.call('GET', KEYS[base + 2]), try, redis.call('ZREM', KEYS[2], id)}
  for r = 1, reads do
    out[#out + 1] = redis.call(ARGV[4 + r], KEYS[base + 3 + r])
  end
  return out
end
local out = {}
for j = first_id, #ARGV do
  local ok, claimed = pcall(claim, ARGV[j], 2 + (j - first_id) * per_job)
  if not ok then
    claimed = {false, type(claimed) == 'table' and claimed.err or tostring(claimed)}
  end
  out[#out + 1] = claimed
end
return out
"""

PREFETCH_READS = frozenset({"GET", "GETDEL", "EXISTS"})

Prefetch = Callable[[str], Sequence[tuple[str, str]]]


def prefetch_ops(prefetch: Prefetch | None) -> list[str]:
    """The prefetch's reads, which are the same for every job (the claim script relies on it):
    checked once, at the worker's start."""
    ops = [op for op, _ in prefetch("")] if prefetch else []
    if any(op not in PREFETCH_READS for op in ops):
        msg = f"prefetch reads must be one of {sorted(PREFETCH_READS)}"
        raise ValueError(msg)
    return ops


def claim_keys(keys: Keyspace, job_ids: list[str], prefetch: Prefetch | None) -> list[str]:
    """CLAIM's KEYS for `job_ids`, all of one partition: its queue and abort set, then each
    job's lock, payload, try counter and prefetch keys."""
    part = keys.for_job(job_ids[0])
    out = [part.queue, part.abort_key]
    for job_id in job_ids:
        reads = prefetch(job_id) if prefetch else []
        out += [keys.in_progress_key(job_id), keys.arq_job_key(job_id)]
        out += [keys.retry_key(job_id), *(key for _, key in reads)]
    return out


def cancel_requested(running: Mapping[str, asyncio.Task[Any]], requested: list[bytes]) -> set[str]:
    """Cancel the running tasks of the jobs whose abort was asked for; their IDs."""
    aborted = set()
    for raw in requested:
        task = running.get(raw.decode())
        if task is not None:
            aborted.add(raw.decode())
            task.cancel()
    return aborted


@dataclass
class ClaimReplicas:
    """Send a claimed job only once `count` replicas hold its claim (`MSGQ_SUBMIT_MIN_REPLICAS`):
    a claim lost with a failed primary would let another worker claim, and send, the job again.
    Waited for up to `timeout_ms`; past that the jobs are sent anyway (a fleet never stops for a
    missing replica) and `job.claim_not_replicated` says so, once until replicas catch up.
    Meanwhile each WAIT lasts 1 ms, not the timeout: claims go on at full speed until one is
    confirmed again. WAIT counts the writes of its own connection, so it follows each claim in
    the pipeline (on a cluster, on that partition's shard)."""

    count: int
    timeout_ms: int
    short: bool = False

    def wait_args(self) -> tuple[int, int]:
        return self.count, 1 if self.short else self.timeout_ms

    def note(self, acked: list[int]) -> None:
        short = min(acked, default=self.count) < self.count
        if short and not self.short:
            log.warning("job.claim_not_replicated", replicas=min(acked), wanted=self.count)
        self.short = short


async def send_claims(
    pool: Any,
    script: Any,
    claims: list[tuple[list[str], list[Any]]],
    fleet: Sequence[tuple[str, str]],
    replicas: ClaimReplicas | None,
) -> tuple[list[Any], list[Any]]:
    """Each partition's claim (KEYS, ARGV) and the fleet reads in one pipeline: one round trip
    on one node; on a cluster one per shard, sent at once (`msgq.slot_routing`). By SHA: a
    script object in a pipeline costs a SCRIPT EXISTS round trip every time. Returns each
    claim's replies and the fleet reads' values. After NOSCRIPT (Redis restarted, or a shard
    met for the first time) only the claims it refused are sent again: on a cluster the other
    shards' claims ran, and a second run would find the abort request they took already gone."""
    replies: list[Any] = [None] * len(claims)
    acks: list[int] = []
    todo, values = list(range(len(claims))), []
    for attempt in range(2):
        async with pool.pipeline(transaction=False) as pipe:
            for op, key in fleet if attempt == 0 else ():
                pipe.execute_command(op, key)
            for index in todo:
                keys, args = claims[index]
                pipe.evalsha(script.sha, len(keys), *keys, *args)
                if replicas is not None:  # WAIT counts its own connection's writes: the claim's
                    pipe.execute_command("WAIT", *replicas.wait_args())
            answers = await pipe.execute(raise_on_error=False)
        if attempt == 0:
            values, answers = answers[: len(fleet)], answers[len(fleet) :]
            sort_answers([], values, [])  # a fleet read's error is raised
        step = 1 if replicas is None else 2
        acks += [int(a) for a in answers[1::step] if replicas is not None and isinstance(a, int)]
        missed = sort_answers(todo, answers[::step], replies)
        if not missed:
            if replicas is not None:
                replicas.note(acks)
            return replies, values
        await pool.script_load(script.script)
        todo = missed
    msg = "the claim script could not be loaded"
    raise NoScriptError(msg)


@dataclass
class QueueJob:
    """The queue's handle on the job a task runs, handed to the task as a value: its ID, when it
    was enqueued, its try, and what the claim read with it (`prefetched`, in the order of the
    prefetch reads). A terminal record written by that task can end the job in the queue in the
    same atomic step (`finish_commands`); `ended_in_queue` then spares the worker arq's own
    finishing round trip."""

    job_id: str
    keys: Keyspace  # the deployment's: its queue and the job's lock, payload and try counter
    prefetched: tuple[Any, ...] = ()
    enqueued_at: datetime | None = None  # None: refused before its payload was read
    job_try: int = 0
    ended_in_queue: bool = False

    def finish_commands(self) -> list[tuple[str, ...]]:
        """What arq's finish does for a finished job: lock, try counter and payload deleted, out
        of the queue and the abort set."""
        job_id, keys = self.job_id, self.keys.for_job(self.job_id)  # the job's partition
        return [
            ("DEL", keys.in_progress_key(job_id), keys.retry_key(job_id), keys.arq_job_key(job_id)),
            ("ZREM", keys.abort_key, job_id),
            ("ZREM", keys.queue, job_id),
        ]

    def mark_ended(self) -> None:
        self.ended_in_queue = True


@dataclass(frozen=True)
class Claim:
    score: int
    payload: bytes | None
    job_try: int
    aborted: bool
    prefetched: list[Any]
    error: str | None = None  # a key of the job could not be read: the job is refused


def _claim(reply: list[Any] | None, fleet: list[Any]) -> Claim | None:
    """One job's CLAIM reply (None: not claimed), the fleet reads taken beside it appended to
    its prefetched."""
    if reply is None:
        return None
    if reply[0] is None:
        error = reply[1].decode(errors="replace") if isinstance(reply[1], bytes) else reply[1]
        return Claim(0, None, 0, False, [], error=str(error)[:300])
    score, payload, job_try, aborted, *prefetched = reply
    return Claim(int(float(score)), payload, int(job_try), bool(aborted), [*prefetched, *fleet])
