"""The webhook outbox in Redis: one entry per webhook owed, written in the same transaction as the
terminal record (for a batch: as its last job ends), claimed under a lease, removed once
delivered or given up. A crash anywhere between the job ending and the delivery loses nothing:
the entry is there, and a dead dispatcher's lease lapses.

Entries live in a HASH (`job:<id>` or `batch:<id>` -> JSON) and a ZSET of when each is due; a
claim moves the due time to the end of the lease, so exactly one dispatcher holds it at a time.
A job's entry is in its partition's copy of the two (`msgq.keys`, MSGQ_PARTITIONS), written in
the same step as its terminal record, in the same slot; a batch's in the batch's partition,
which holds all its jobs.
Claims read every copy in one round trip (`msgq.script_calls`).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from typing import Literal

import orjson
import structlog
from pydantic import BaseModel, ValidationError
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from msgq.channels import publish
from msgq.keys import Keyspace
from msgq.script_calls import run_each
from msgq.watched import Writes, watched
from schemas import TERMINAL, JobRecord, WebhookState

log = structlog.get_logger("msgq.webhooks")

MAX_AGE_S = 24 * 3600  # the default delivery window; then the webhook is `failed`
# Past the window, an entry lives one more attempt (a lease) and a poll; older, nobody delivers it.
AUDIT_MARGIN_S = 300
FROM_KEPT = 10_000  # claimed entries whose copy a process remembers until they are settled

# A batch's webhook: owed once, when the last of its jobs has ended (counts = size). KEYS: batch,
# counts, entries, due. ARGV: now ms, webhook-id. The entry's JSON is built here (cjson).
BATCH_ENDED = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local meta = cjson.decode(raw)
if type(meta.callback_url) ~= 'string' then return 0 end
local n = 0
for _, v in ipairs(redis.call('HMGET', KEYS[2], 'succeeded', 'failed', 'canceled', 'expired')) do
  if v then n = n + tonumber(v) end
end
local key = 'batch:' .. meta.id
if n ~= tonumber(meta.count) or redis.call('HEXISTS', KEYS[3], key) == 1 then return 0 end
redis.call('HSET', KEYS[3], key, cjson.encode({kind = 'batch', ref = meta.id,
  url = meta.callback_url, tenant = meta.tenant, webhook_id = ARGV[2], created_ms = ARGV[1]}))
redis.call('ZADD', KEYS[4], ARGV[1], key)
return 1
"""

# KEYS: due, entries. ARGV: now ms, lease end ms, limit. Returns key, entry, key, entry, ...,
# then when the copy's next entry falls due (ms, '' for none), its claimed ones' leases included:
# the dispatcher sleeps until then rather than polling.
CLAIM = """
local out = {}
for _, key in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])) do
  local raw = redis.call('HGET', KEYS[2], key)
  if raw then
    redis.call('ZADD', KEYS[1], ARGV[2], key)
    table.insert(out, key)
    table.insert(out, raw)
  else
    redis.call('ZREM', KEYS[1], key)
  end
end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
table.insert(out, next[2] or '')
return out
"""

# Remove (ARGV[3] empty) or rewrite and reschedule an entry, only if it is still the one claimed.
# KEYS: due, entries. ARGV: key, entry as claimed, new entry, due ms.
SETTLE = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
end
return 1
"""


class Entry(BaseModel):
    """One webhook owed. `webhook_id` is the same on every attempt, so receivers can dedupe."""

    kind: Literal["job", "batch"]
    ref: str  # the job's stored ID, or the batch's ID
    url: str
    webhook_id: str
    tenant: str | None = None
    created_ms: int
    attempts: int = 0
    last_error: str | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.ref}"


def webhook_id(kind: str, ref: str, ending: str = "") -> str:
    """Stable for one ending of one job (a job re-run by `msgq retry` ends anew: a new ID)."""
    return "msg_" + hashlib.sha256(f"{kind}:{ref}:{ending}".encode()).hexdigest()[:32]


def pending(record: JobRecord) -> JobRecord:
    """The terminal record as written: webhook `pending` when it has somewhere to go."""
    if record.callback_url and record.status.terminal:
        return record.model_copy(update={"webhook": WebhookState()})
    return record


def schedule(pipe: Redis, keys: Keyspace, record: JobRecord) -> None:
    """Owe the terminal record's webhook (and its batch's, if it was the last), on `pipe`: the
    caller's transaction, the one that writes the terminal record."""
    now_ms = int(time.time() * 1000)
    if record.callback_url:
        ending = record.finished_at.isoformat() if record.finished_at else ""
        entry = Entry(
            kind="job",
            ref=record.id,
            url=record.callback_url,
            webhook_id=webhook_id("job", record.id, ending),
            tenant=record.tenant,
            created_ms=now_ms,
        )
        part = keys.for_job(record.id)  # the record's partition: written with it
        pipe.hset(part.webhooks_key, entry.key, entry.model_dump_json())
        pipe.zadd(part.webhooks_due_key, {entry.key: now_ms})
    if record.batch_id:  # the batch, its counts and its outbox: in its partition, as the job
        batch = (keys.batch_key(record.batch_id), keys.batch_counts_key(record.batch_id))
        args = (str(now_ms), webhook_id("batch", record.batch_id))
        box = keys.for_job(record.batch_id)
        pipe.eval(BATCH_ENDED, 4, *batch, box.webhooks_key, box.webhooks_due_key, *args)


async def announce(redis: Redis, keys: Keyspace, record: JobRecord | None) -> JobRecord | None:
    """Wake the webhook dispatchers when `record`, as just stored, owes its webhook: they sleep
    until then (or an entry's due time, or `MSGQ_WEBHOOK_POLL_S`) instead of polling the
    outbox every second. Sent after the record's write, on the deployment's channel (on a
    cluster another slot than the record's); a wake lost costs latency, never the webhook, so
    Redis failing here fails nothing. Returns `record`."""
    if record is None or not record.callback_url or not record.status.terminal:
        return record
    if record.webhook is None or record.webhook.status == "pending":
        with contextlib.suppress(RedisError):
            await publish(redis, keys, keys.webhooks_wake, record.id)
    return record


def public_body(record: JobRecord) -> bytes:
    """The record as the HTTP API shows it (its plain ID), plus its tenant, without the delivery
    state, which changes between attempts while the body must not. The tenant is in the signed
    body so a receiver can check whose job it is, not only that msgq signed it."""
    data = record.model_dump(mode="json", exclude={"webhook"})
    prefix = f"{record.tenant}:" if record.tenant else ""
    if prefix and record.id.startswith(prefix):
        data["id"] = record.id[len(prefix) :]
    return orjson.dumps(data)


def copies(keys: Keyspace) -> list[Keyspace]:
    """Every copy of the outbox: the deployment's (batches) and each partition's (jobs)."""
    return list({part.prefix: part for part in [keys.root, *keys.root.parts]}.values())


def _outbox_keys(keys: Keyspace, entry_key: str) -> list[str]:
    """Due and entries of the copy holding `entry_key` (`job:<id>` or `batch:<id>`): the
    partition of the job, or of the batch (`msgq.keys.partition_key`)."""
    copy = keys.for_job(entry_key.partition(":")[2])
    return [copy.webhooks_due_key, copy.webhooks_key]


class Outbox:
    """The dispatcher's side: claim under a lease, settle, and mirror the state on the record."""

    def __init__(self, redis: Redis, keys: Keyspace) -> None:
        self.redis, self.keys = redis, keys
        self._claim = redis.register_script(CLAIM)
        self._settle = redis.register_script(SETTLE)
        self._from: dict[str, list[str]] = {}  # a claimed entry's copy (due, entries)
        self.next_due_ms: int | None = None  # read by the last claim

    async def claim(self, *, lease_s: float, limit: int) -> list[tuple[Entry, bytes]]:
        """Up to `limit` due entries from each copy, leased. `next_due_ms` then says when the
        next entry falls due (None: none is owed)."""
        now_ms = int(time.time() * 1000)
        self.next_due_ms = None
        args = [now_ms, now_ms + int(lease_s * 1000), limit]
        calls = [([c.webhooks_due_key, c.webhooks_key], args) for c in copies(self.keys)]
        claimed: list[tuple[Entry, bytes]] = []
        if len(self._from) > FROM_KEPT:  # entries claimed and never settled (a crash): forgotten
            self._from.clear()
        answers = await run_each(self.redis, self._claim, calls)
        for (keys, _), reply in zip(calls, answers, strict=True):
            *flat, soonest = reply
            if soonest:
                due = int(float(soonest))
                self.next_due_ms = due if self.next_due_ms is None else min(self.next_due_ms, due)
            for key, raw in zip(flat[::2], flat[1::2], strict=True):
                self._from[key.decode(errors="replace")] = list(keys)
                try:
                    claimed.append((Entry.model_validate_json(raw), raw))
                except ValidationError:  # not msgq's writing: dropped, not retried forever
                    entry_key = key.decode(errors="replace")
                    log.error("webhook.entry_corrupt", entry=entry_key)
                    await self._settle(keys=self._keys_of(entry_key), args=[key, raw, "", 0])
        return claimed

    async def remove(self, entry: Entry, claimed: bytes) -> bool:
        """Delivered or given up; False when the entry changed meanwhile (a newer ending)."""
        args: list[str | bytes | int] = [entry.key, claimed, "", 0]
        return bool(await self._settle(keys=self._keys_of(entry.key), args=args))

    async def reschedule(self, entry: Entry, claimed: bytes, *, due_s: float) -> bool:
        args: list[str | bytes | int] = [
            entry.key,
            claimed,
            entry.model_dump_json(),
            int(due_s * 1000),
        ]
        return bool(await self._settle(keys=self._keys_of(entry.key), args=args))

    def _keys_of(self, entry_key: str) -> list[str]:
        """The copy an entry was claimed from (one written before partitions may be in the
        deployment's own), else the copy it belongs in."""
        return self._from.pop(entry_key, None) or _outbox_keys(self.keys, entry_key)

    async def set_state(self, job_id: str, state: WebhookState) -> None:
        """Write `webhook` on a terminal record and nothing else: the one field write-once
        leaves open. The record's other fields are kept as stored (edited as raw JSON, under
        WATCH); a record that is not terminal (re-opened meanwhile) is left alone."""
        key = self.keys.record_key(job_id)

        async def body(pipe: Pipeline) -> tuple[None, Writes | None]:
            raw = await pipe.get(key)
            data = None if raw is None else orjson.loads(raw)
            if data is None or data.get("status") not in TERMINAL:
                return None, None
            data["webhook"] = state.model_dump(mode="json")
            return None, lambda pipe: pipe.set(key, orjson.dumps(data), keepttl=True)

        await watched(self.redis, [key], body)


async def audit_findings(
    redis: Redis, keys: Keyspace, *, now_s: float | None = None
) -> list[tuple[str, str]]:
    """For `msgq audit`: (violation, example) for entries whose job or batch is gone, entries
    pending past the delivery window, and entries and due times that do not pair up."""
    now_s = time.time() if now_s is None else now_s
    found: list[tuple[str, str]] = []
    entries: dict[str, Entry] = {}
    due: set[str] = set()
    for copy in copies(keys):
        entries |= {
            k.decode(): Entry.model_validate_json(v)
            async for k, v in redis.hscan_iter(copy.webhooks_key)
        }
        due |= {k.decode() async for k, _ in redis.zscan_iter(copy.webhooks_due_key)}
    for key, entry in entries.items():
        owner = keys.record_key(entry.ref) if entry.kind == "job" else keys.batch_key(entry.ref)
        if not await redis.exists(owner):
            found.append(("webhook entry without its job or batch", key))
        if now_s * 1000 - entry.created_ms > (MAX_AGE_S + AUDIT_MARGIN_S) * 1000:
            found.append(("webhook pending longer than its 24 h window", key))
        if key not in due:
            found.append(("webhook entry never due (not in the due set)", key))
    found += [("webhook due without its entry", key) for key in due - set(entries)]
    return found
