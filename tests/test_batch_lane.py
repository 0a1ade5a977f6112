"""The batch lane: jobs pooled across producers into upstream Message Batches at half price,
every per-request outcome, cancels, `auto`, and the lane in every producer interface."""

from __future__ import annotations

import json
import subprocess
import tracemalloc
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from msgq.audit import audit
from msgq.caption.output import CaptionLog
from msgq.caption.run import CaptionOptions, CaptionRun
from msgq.client import Client
from msgq.connections import connect
from msgq.dev.stack import msgq_command
from msgq.jobs.store import JobStore
from msgq.settings import Settings
from schemas import JobRecord, JobStatus, Lane
from tests.conftest import KEYS, SAMPLES, TEST_API_KEY, Sim, StartWorker, eventually, flush
from tests.images import image_bytes
from worker.lane.api import LaneApi
from worker.reconciler import Reconciler

TEXT = json.loads((SAMPLES / "requests" / "text.json").read_text())
N = 60  # the 500 runs in `make bench` (2,000 images)


def configure(sim: Sim, **values: Any) -> None:
    sim.http.post("/_sim/batch-config", json=values).raise_for_status()


def upstream_batches(sim: Sim) -> list[dict[str, Any]]:
    return list(sim.http.get("/_sim/batches").json()["data"])


def assert_sent_once(sim: Sim) -> None:
    """No job (custom_id without its attempt suffix) in two upstream batches."""
    jobs = [cid.rsplit("-", 1)[0] for b in upstream_batches(sim) for cid in b["custom_ids"]]
    assert len(jobs) == len(set(jobs))


def submit_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": settings.redis_url}
    env["MSGQ_PARTITIONS"] = str(settings.partitions)
    return subprocess.run(
        msgq_command("submit", "-", *args),
        input=json.dumps(TEXT),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


@pytest.fixture
def lane_settings(settings: Settings) -> Settings:
    """Flush 0.3 s after the first pooled job, poll every 0.2-0.5 s, look up an unanswered
    create after 3 s: the lane's timings on a test's clock."""
    return settings.model_copy(
        update={
            "batch_max_wait_s": 0.3,
            "batch_poll_s": 0.2,
            "batch_poll_max_s": 0.5,
            "batch_create_timeout_s": 3.0,
        }
    )


async def caption(tmp_path: Path, settings: Settings, lane: Lane, max_tokens: int) -> list[Any]:
    options = CaptionOptions(
        inputs=[str(tmp_path / "photos")],
        out=tmp_path / f"{lane.value}.jsonl",
        max_tokens=max_tokens,  # a different job ID per run; captions are far shorter
        lane=lane,
        window=N,
    )
    log = CaptionLog(options.out)
    try:
        async with connect(settings.redis_url) as redis:
            tally = await CaptionRun(redis, settings, options, log).run()
    finally:
        log.close()
    assert tally.done == N and tally.failed == 0
    return [json.loads(line) for line in options.out.read_text().splitlines()]


async def test_same_captions_at_half_the_cost_with_no_messages_calls(
    lane_settings: Settings, sim: Sim, start_worker: StartWorker, tmp_path: Path, redis: Redis
) -> None:
    """N images captioned in each lane: identical captions, batch cost 0.50 of realtime, and the
    batch run makes no /v1/messages call (only the Batches endpoints)."""
    (tmp_path / "photos").mkdir()
    for i in range(N):
        colour = (i * 4 % 256, 255 - i * 4 % 256, i * 40 % 256)
        (tmp_path / "photos" / f"{i:03}.png").write_bytes(image_bytes(colour=colour))
    configure(sim, processing_s=0.5)
    await start_worker(lane_settings)
    realtime = await caption(tmp_path, lane_settings, Lane.REALTIME, 200)
    assert sim.received == N
    sim.reset()
    configure(sim, processing_s=0.5)
    batch = await caption(tmp_path, lane_settings, Lane.BATCH, 199)
    stats = sim.stats()
    assert stats["received"] == 0 and stats["batches"]["requests"] == N
    assert {r["path"]: r["caption"] for r in batch} == {r["path"]: r["caption"] for r in realtime}
    ratio = sum(r["cost_usd"] for r in batch) / sum(r["cost_usd"] for r in realtime)
    assert ratio == pytest.approx(0.5, abs=0.01)
    record = JobRecord.model_validate_json(await redis.get(KEYS.record_key(batch[0]["job_id"])))
    assert record.served_by is Lane.BATCH and record.upstream_batch_id in {
        b["id"] for b in upstream_batches(sim)
    }
    assert record.usage is not None and record.usage.input_tokens > 0
    assert_sent_once(sim)
    assert (await audit(redis, KEYS)).clean


async def test_auto_follows_the_deadline_and_batch_rules_are_checked_first(
    lane_settings: Settings, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """auto: a 1 h deadline goes realtime, no deadline goes batch. A request the Batches API
    refuses: `batch` fails naming the rule (nothing sent), `auto` runs realtime."""
    from datetime import timedelta

    from msgq.jobs.records import utcnow

    configure(sim, processing_s=0.2)
    await start_worker(lane_settings)
    soon = await client.submit(TEXT, lane="auto", deadline=utcnow() + timedelta(hours=1))
    later = await client.submit(TEXT, lane="auto")
    streamed = {**TEXT, "stream": True}
    refused = await client.submit(streamed, lane="batch")
    fallback = await client.submit(streamed, lane="auto")
    records = {j.id: await client.wait(j.id, timeout=30) for j in (soon, later, refused, fallback)}
    assert records[soon.id].served_by is Lane.REALTIME
    assert records[later.id].served_by is Lane.BATCH and records[later.id].lane is Lane.AUTO
    assert records[refused.id].status is JobStatus.FAILED
    assert records[refused.id].error is not None
    assert "stream: true is not allowed inside a batch" in records[refused.id].error.message
    assert records[fallback.id].served_by is Lane.REALTIME
    assert sim.received == 2 and sim.stats()["batches"]["requests"] == 1


async def test_each_per_request_outcome(
    lane_settings: Settings, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """errored+retryable → pooled again (a second batch, attempt 2); final error → failed with
    the API's error; expired → pooled again, attempt refunded; retryable with the deadline
    near → realtime. A 429 with retry-after on create is obeyed, a 503 and a 429 on retrieve
    are ridden out."""
    from datetime import timedelta

    from msgq.jobs.records import utcnow

    sim.script({"status": 429, "headers": {"retry-after": "1"}}, key="batches:create")
    sim.script({"status": 503}, {"status": 429}, key="batches:retrieve")
    configure(sim, processing_s=0.2, errored_rate=1.0, error_type="overloaded_error")
    near = utcnow() + timedelta(hours=2)  # nearer than batch_sla_s (24 h)
    jobs = [await client.submit(TEXT, lane="batch") for _ in range(2)]
    hurried = await client.submit(TEXT, lane="batch", deadline=near)
    await start_worker(lane_settings)

    async def first_ended() -> bool:
        return any(b["ended"] for b in upstream_batches(sim))

    await eventually(first_ended)
    configure(sim, errored_rate=0.0)
    done = [await client.wait(j.id, timeout=30) for j in jobs]
    assert {r.status for r in done} == {JobStatus.SUCCEEDED} and {r.attempts for r in done} == {2}
    assert (await client.wait(hurried.id, timeout=30)).served_by is Lane.REALTIME
    assert sim.received == 1  # only the hurried job went to /v1/messages
    calls = sim.stats()["batches"]["calls"]
    assert calls["create"] == 3  # refused once (429), then the first batch, then the second
    assert {"429", "503"} <= set(sim.stats()["batches"]["by_status"])  # both ridden out

    configure(sim, errored_rate=1.0, error_type="invalid_request_error")
    final = await client.wait((await client.submit(TEXT, lane="batch")).id, timeout=30)
    assert final.status is JobStatus.FAILED and final.error is not None
    assert final.error.type == "invalid_request_error" and final.error.status_code == 400
    configure(sim, errored_rate=0.0, expired_rate=1.0)
    expired = await client.submit(TEXT, lane="batch")

    async def expired_once() -> bool:
        return sum(b["ended"] for b in upstream_batches(sim)) >= 5

    await eventually(expired_once)
    configure(sim, expired_rate=0.0)
    again = await client.wait(expired.id, timeout=30)
    assert again.status is JobStatus.SUCCEEDED and again.attempts == 1  # the expiry refunded


async def test_cancel_in_an_upstream_batch(
    lane_settings: Settings, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """One member cancelled: it ends `canceled` without the Message but with its (billed)
    cost; the other succeeds. Every member cancelled: the upstream batch is cancelled."""
    configure(sim, processing_s=1.5)
    keep, drop = [await client.submit(TEXT, lane="batch") for _ in range(2)]
    await start_worker(lane_settings)

    async def upstream() -> bool:
        return all([(await client.get(j.id)).upstream_batch_id for j in (keep, drop)])

    await eventually(upstream)
    asked = await client.cancel(drop.id)
    assert asked.status is JobStatus.IN_PROGRESS and asked.cancel_requested
    canceled = await client.wait(drop.id, timeout=30)
    assert canceled.status is JobStatus.CANCELED and canceled.result is None
    assert canceled.cost_usd and canceled.usage and canceled.served_by is Lane.BATCH
    assert (await client.wait(keep.id, timeout=30)).status is JobStatus.SUCCEEDED
    assert "cancel" not in sim.stats()["batches"]["calls"]

    configure(sim, processing_s=30.0)
    both = [await client.submit(TEXT, lane="batch") for _ in range(2)]

    async def sent() -> bool:
        return all([(await client.get(j.id)).upstream_batch_id for j in both])

    await eventually(sent)
    for job in both:
        await client.cancel(job.id)
    ended = [await client.wait(j.id, timeout=30) for j in both]
    assert {r.status for r in ended} == {JobStatus.CANCELED} and {r.cost_usd for r in ended} == {
        None
    }
    assert sim.stats()["batches"]["calls"]["cancel"] == 1


async def test_pooled_and_upstream_jobs_are_not_orphans_and_vanished_ones_are_recovered(
    lane_settings: Settings, client: Client, sim: Sim, start_worker: StartWorker, redis: Redis
) -> None:
    """A pooled job has no arq job nor lock: audit is clean. Its pool entry deleted: audit
    flags it, the reconciler (two passes) pools it again, and it is served by a batch."""
    held = lane_settings.model_copy(update={"batch_max_wait_s": 3600.0})
    await start_worker(held)
    job = await client.submit(TEXT, lane="batch")

    async def pooled() -> bool:
        return bool(await redis.zscore(KEYS.lane_pool, job.id))

    await eventually(pooled)
    assert (await audit(redis, KEYS)).clean
    await redis.zrem(KEYS.lane_pool, job.id)  # an operator's mistake, or writes lost in a failover
    assert not (await audit(redis, KEYS)).clean
    store = JobStore.from_settings(redis, held)
    reconciler = Reconciler(redis, store, held)
    assert (await reconciler.run_once()).requeued == []
    assert (await reconciler.run_once()).requeued == [job.id]
    assert await redis.zscore(KEYS.lane_pool, job.id) is not None
    assert (await audit(redis, KEYS)).clean
    configure(sim, processing_s=0.2)
    await redis.zadd(KEYS.lane_pool, {job.id: 0})  # as if pooled an hour ago: the flush is due
    record = await client.wait(job.id, timeout=30)
    assert record.status is JobStatus.SUCCEEDED and record.served_by is Lane.BATCH

    async def left() -> bool:  # the lane lets go just after the terminal write
        return await redis.hget(KEYS.lane_where, job.id) is None

    await eventually(left)


async def test_lane_from_every_interface(
    api_settings: Settings, sim: Sim, redis: Redis, tmp_path: Path, start_worker: StartWorker
) -> None:
    """`lane` from the HTTP jobs API, `msgq submit --lane`, raw Redis JSON (run by a worker in
    the batch lane), and the Batches API's default (MSGQ_BATCHES_LANE) with a tenant's
    batches_lane winning."""
    from msgq.http.app import create_app

    tenants = tmp_path / "tenants.toml"
    tenants.write_text('[tenants.tenant-b]\nbatches_lane = "realtime"\n')
    settings = api_settings.model_copy(update={"batches_lane": Lane.BATCH, "tenants_file": tenants})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            a = {"x-api-key": "key-a-0123456789"}
            b = {"x-api-key": "key-b-0123456789"}
            job = await http.post("/v1/jobs", json={"request": TEXT, "lane": "batch"}, headers=a)
            assert job.status_code == 202 and job.json()["lane"] == "batch"
            body = {"requests": [{"custom_id": "one", "params": TEXT}]}
            for headers in (a, b):
                (
                    await http.post("/v1/messages/batches", json=body, headers=headers)
                ).raise_for_status()
    submitted = submit_cli(settings, "--lane", "auto")
    lanes = {}
    for part in KEYS.parts:  # every partition's records
        async for key in redis.scan_iter(match=part.record_key("*")):
            record = JobRecord.model_validate_json(await redis.get(key))
            lanes[record.id] = record.lane
    assert lanes["tenant-a:" + job.json()["id"]] is Lane.BATCH
    assert lanes[submitted.stdout.strip()] is Lane.AUTO
    by_tenant = {k.split(":")[0]: v for k, v in lanes.items() if ":msgbatch_" in k}
    assert by_tenant == {"tenant-a": Lane.BATCH, "tenant-b": Lane.REALTIME}

    flush(settings.redis_url)  # every master of a cluster: the jobs above are in partitions
    raw = {"t": 1, "f": "run_message", "a": [], "et": 1, "k": {"request": TEXT, "lane": "batch"}}
    await redis.set(KEYS.arq_job_key("raw-1"), orjson.dumps(raw))
    await redis.zadd(settings.keys.for_job("raw-1").queue, {"raw-1": 1})
    configure(sim, processing_s=0.2)
    fast = settings.model_copy(update={"batch_max_wait_s": 0.2, "batch_poll_s": 0.2})
    await start_worker(fast)

    async def seen() -> bool:  # a raw producer's record is written by the worker
        return bool(await redis.exists(KEYS.record_key("raw-1")))

    await eventually(seen)
    async with Client(connect(settings.redis_url), settings) as client:
        record = await client.wait("raw-1", timeout=30)
    assert record.lane is Lane.BATCH and record.served_by is Lane.BATCH
    assert sim.received == 0


async def test_results_are_read_with_flat_memory(sim: Sim) -> None:
    """A 20,000-line results file (~8 MB) is read line by line: the reader's peak allocation
    stays far below the file's size (the 100,000-line RSS figure is in `make bench`)."""
    configure(sim, processing_s=0.0)
    headers = {"x-api-key": TEST_API_KEY, "anthropic-version": "2023-06-01"}
    small = {
        "model": "claude-haiku-4-5",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
    }
    body = {"requests": [{"custom_id": f"r{i}", "params": small} for i in range(20_000)]}
    async with httpx.AsyncClient(base_url=sim.url, headers=headers, timeout=60) as http:
        batch = (await http.post("/v1/messages/batches", json=body)).json()
        api = LaneApi(http)
        lines = size = 0
        tracemalloc.start()
        try:
            async with api.result_lines(api.results_url(batch)) as stream:
                async for line in stream:
                    lines += 1
                    size += len(line)
                    orjson.loads(line)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert lines == 20_000 and size > 7_500_000
    assert peak < 2_000_000, f"peak {peak} bytes for a {size}-byte file"


async def test_a_tenants_budget_holds_in_the_batch_lane(
    lane_settings: Settings, client: Client, sim: Sim, start_worker: StartWorker, tmp_path: Path
) -> None:
    """A budget is reserved when the job is pooled and settled to the batch-priced cost when it
    ends (spend = the record's cost); a budget the job cannot fit fails it before it is sent."""
    from msgq.tenancy.budgets import Budgets
    from msgq.tenancy.tenants import parse_tenants
    from tests.conftest import KEYS

    text = (
        "[tenants.acme]\nbudget_usd_day = 1.0\n"
        '[tenants.frugal]\nbudget_usd_day = 0.000001\non_budget = "fail"\n'
    )
    (tmp_path / "tenants.toml").write_text(text)
    custom = lane_settings.model_copy(update={"tenants_file": tmp_path / "tenants.toml"})
    configure(sim, processing_s=0.2)
    await start_worker(custom)
    paid = await client.submit(TEXT, lane="batch", tenant="acme")
    refused = await client.submit(TEXT, lane="batch", tenant="frugal")
    record = await client.wait(paid.id, timeout=30)
    assert record.served_by is Lane.BATCH and record.cost_usd
    failed = await client.wait(refused.id, timeout=30)
    assert failed.status is JobStatus.FAILED and failed.error is not None
    assert failed.error.type == "budget_exceeded"
    async with connect(custom.redis_url) as redis:

        async def settled() -> bool:
            return not await redis.hlen(KEYS.lane_budgets)

        await eventually(settled)
        usage = await Budgets(redis, KEYS).usage("acme", parse_tenants(text).get("acme"))
    assert usage["spent_today_usd"] == pytest.approx(record.cost_usd, abs=1e-6)
    assert sim.stats()["batches"]["requests"] == 1  # the refused job was never sent


def test_caption_dry_run_prices_both_lanes(tmp_path: Path) -> None:
    """`msgq caption --dry-run --lane batch` shows realtime and batch side by side, the batch
    figures half the realtime ones, and marks the lane the run would take."""
    (tmp_path / "photos").mkdir()
    for i in range(3):
        (tmp_path / "photos" / f"{i}.png").write_bytes(image_bytes(colour=(i * 80, 10, 10)))
    out = subprocess.run(
        msgq_command("caption", str(tmp_path / "photos"), "--dry-run", "--lane", "batch"),
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    rows = {line.split(":")[0].strip(): line for line in out.splitlines() if "cost_" in line}
    realtime, batch = rows["cost_realtime"], rows["cost_batch"]
    assert "this run" in batch and "this run" not in realtime
    dollars = [float(word.strip("$,")) for word in (realtime + batch).split() if word[0] == "$"]
    assert dollars[2:] == pytest.approx([d / 2 for d in dollars[:2]], abs=1e-4)


async def test_a_batch_lane_jobs_spec_goes_with_its_terminal_write(
    client: Client, redis: Redis
) -> None:
    """The spec is dropped after the job leaves the lane (`msgq.lanes.leave`): a crash between
    the job's ending and that step left it behind for good, with no TTL. The terminal record's
    own write drops it now, in the same atomic step (the spec is in the job's partition)."""
    job = await client.submit(TEXT, lane="batch")  # no worker: it stays queued
    spec = KEYS.lane_spec_key(job.id)
    await redis.set(spec, orjson.dumps({"request": TEXT}))  # as pooling writes it
    canceled = await client.cancel(job.id)
    assert canceled is not None and canceled.status is JobStatus.CANCELED
    assert not await redis.exists(spec)
