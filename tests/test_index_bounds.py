"""Issue 24 item 4: every job index holds what the live records need, however long the fleet
runs. Expired records leave the indexes on the reconciler's pass; lane claims and a tenant's
batch index are trimmed on write. The long soak is tests/test_soak_indexes.py."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from redis.asyncio import Redis

from msgq.batches import Batches
from msgq.client import Client
from msgq.jobs.records import ended
from msgq.jobs.store import JobStore
from msgq.settings import Settings
from schemas import JobStatus
from schemas.batches import BatchCreate
from tests.conftest import KEYS, SAMPLES, eventually
from worker.lane import adopt as batch_adopt
from worker.reconciler import Reconciler

BODY = json.loads((SAMPLES / "requests" / "text.json").read_text())
DAY_MS = 24 * 3600 * 1000


async def members(redis: Redis, key: str) -> set[str]:
    return {m.decode() for m in await redis.zrange(key, 0, -1)}


async def test_expired_records_leave_every_index_on_the_reconcilers_pass(
    redis: Redis, settings: Settings, client: Client
) -> None:
    """Records kept 1 s: two end and expire, one stays queued, one ends and is re-opened by
    `msgq retry`. One reconciler pass leaves only the live two in the fleet, tenant, status and
    model indexes (today they stayed until a listing happened to read them)."""
    short = settings.model_copy(update={"retention_s": 1})
    store = JobStore.from_settings(redis, short)
    model = BODY["model"]
    ids = [(await client.submit(BODY, tenant="acme")).id for _ in range(4)]
    gone, live, reopened = ids[:2], ids[2], ids[3]
    for job_id in gone:
        await store.update(job_id, lambda r: ended(r, JobStatus.SUCCEEDED))
    await store.update(reopened, lambda r: ended(r, JobStatus.FAILED))
    kept = JobStore.from_settings(redis, settings)  # the spec kept 7 days, not 1 s
    await kept.keep_spec(reopened, {"request": BODY})
    assert await kept.reopen(reopened, lambda spec: json.dumps(spec).encode()) is not None

    async def expired() -> bool:
        return not await redis.exists(*(KEYS.record_key(i) for i in gone))

    async def all_notes_due() -> bool:  # the re-opened job's note included
        return await redis.zcount(KEYS.expiring_key, "-inf", int(time.time() * 1000)) == 3

    await eventually(expired)
    await eventually(all_notes_due)
    done = await Reconciler(redis, store, short).run_once()
    assert done.pruned == 2
    for key in (KEYS.index_key, KEYS.tenant_jobs_key("acme"), KEYS.model_jobs_key(model)):
        assert await members(redis, key) == {live, reopened}, key
    assert await members(redis, KEYS.status_jobs_key("queued")) == {live, reopened}
    assert await members(redis, KEYS.status_jobs_key("succeeded")) == set()
    assert await members(redis, KEYS.status_jobs_key("failed")) == set()
    assert await redis.zcard(KEYS.expiring_key) == 0  # the re-opened job's note dropped too


async def test_a_note_due_before_its_record_expires_waits_for_it(
    redis: Redis, settings: Settings, client: Client
) -> None:
    """The notes use the worker's clock, the TTL Redis's: a record still there when its note
    comes due keeps its entries, and the note moves to the record's real end."""
    store = JobStore.from_settings(redis, settings)  # 7 days
    job_id = (await client.submit(BODY)).id
    await store.update(job_id, lambda r: ended(r, JobStatus.SUCCEEDED))
    (note,) = await redis.zrange(KEYS.expiring_key, 0, -1)
    await redis.zadd(KEYS.expiring_key, {note: 1})  # due long ago, as a fast clock would have it
    done = await Reconciler(redis, store, settings).run_once()
    assert done.pruned == 0 and await members(redis, KEYS.index_key) == {job_id}
    score = await redis.zscore(KEYS.expiring_key, note)
    assert score is not None and score > time.time() * 1000 + 6 * DAY_MS


async def test_lane_claims_and_a_tenants_batch_index_are_trimmed_on_write(
    redis: Redis, settings: Settings, store: JobStore
) -> None:
    """`msgq:lane:adopted` was trimmed only while resolving an unanswered create, the tenant's
    batch index never: each now drops what has outlived its use on every write."""
    now_ms = int(time.time() * 1000)
    await redis.zadd(KEYS.lane_adopted, {"msgbatch_old": now_ms - 40 * DAY_MS})
    created = {"id": "msgbatch_new", "created_at": datetime.now(UTC).isoformat()}
    await batch_adopt.claim(redis, KEYS, created)
    assert await members(redis, KEYS.lane_adopted) == {"msgbatch_new"}

    index = KEYS.tenant_batches_key("acme")
    await redis.zadd(index, {"msgbatch_expired": now_ms - 31 * DAY_MS})  # keys gone at 30 days
    await redis.zadd(index, {"msgbatch_kept": now_ms - 20 * DAY_MS})
    body = BatchCreate.model_validate({"requests": [{"custom_id": "a", "params": BODY}]})
    meta = await Batches(redis, store, settings).create("acme", body)
    assert await members(redis, index) == {"msgbatch_kept", meta.id}
