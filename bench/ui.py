"""Dashboard page times at 100,000 records: p50 and p99 per page, through real HTTP (uvicorn on
loopback) with an admin session. `python -m bench.ui` runs it alone; `make bench` includes it.

The records go in through the store's own writes (record, indexes, counters), in pipelines:
90% succeeded (with a Message), 5% failed (three error groups), the rest queued, retrying or in
progress, across three tenants and three models; plus one 1,000-request batch.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from pydantic import SecretStr
from redis.asyncio import Redis

from bench.harness import redis_server
from msgq.batches import Batches
from msgq.client import enqueue_payload
from msgq.dev.embedded_redis import free_port
from msgq.http.app import create_app
from msgq.jobs.records import build_spec, new_record
from msgq.jobs.store import JobStore
from msgq.settings import Settings
from schemas import JobError, JobStatus, JobUsage
from schemas.batches import BatchCreate

ADMIN = "bench-admin-key-0123456789"
TENANTS = ("acme", "globex", "initech")
MODELS = ("claude-haiku-4-5", "claude-sonnet-4-5", "claude-opus-4-1")
ERRORS = (
    JobError(type="overloaded_error", message="Overloaded", status_code=529, retryable=True),
    JobError(type="invalid_request_error", message="prompt is too long", status_code=400),
    JobError(type="rate_limit_error", message="Number of requests exceeded", status_code=429),
)
MESSAGE = {
    "id": "msg_bench",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5",
    "content": [{"type": "text", "text": "A short answer of about the usual length. " * 4}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 400, "output_tokens": 40},
}


def _final(n: int) -> tuple[JobStatus, dict[str, Any]]:
    """The state of record n: 90% succeeded, 5% failed, the rest active."""
    slot = n % 100
    if slot < 90:
        usage = JobUsage(input_tokens=400, output_tokens=40)
        return JobStatus.SUCCEEDED, {"result": MESSAGE, "usage": usage, "cost_usd": 0.0006}
    if slot < 95:
        return JobStatus.FAILED, {"error": ERRORS[n % 3], "attempts": 1 + n % 8}
    if slot < 98:
        return JobStatus.QUEUED, {}
    if slot < 99:
        return JobStatus.RETRYING, {"error": ERRORS[0], "attempts": 2}
    return JobStatus.IN_PROGRESS, {"attempts": 1}


async def populate(store: JobStore, settings: Settings, count: int) -> str:
    """`count` records through the store's writes; returns the ID of a failed one."""
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    failed = ""
    for start in range(0, count, 2000):
        async with store.redis.pipeline(transaction=False) as pipe:
            for n in range(start, min(count, start + 2000)):
                tenant, model = TENANTS[n % 3], MODELS[n % 7 % 3]
                request = {
                    "model": model,
                    "max_tokens": 50,
                    "messages": [{"role": "user", "content": f"q{n}"}],
                }
                spec = build_spec(request, validate=False, tenant=tenant)
                record = new_record(
                    f"{tenant}:job_{n:06}",
                    spec,
                    created_at=now,
                    default_max_attempts=8,
                    tenant=tenant,
                )
                store.enqueue_fresh(
                    pipe, [(record, enqueue_payload(spec, now_ms))], now_ms - count + n
                )
                status, fields = _final(n)
                if status is not JobStatus.QUEUED:
                    ended = now if status.terminal else None
                    changed = record.model_copy(
                        update={"status": status, "finished_at": ended, **fields}
                    )
                    store._write(pipe, changed)  # the store's own indexes and counters
                    failed = record.id if status is JobStatus.FAILED else failed
            await pipe.execute()
    return failed


async def timed(http: httpx.AsyncClient, path: str, samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        response = await http.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    return sorted(times)


async def page_times(count: int = 100_000, samples: int = 40) -> list[list[Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="msgq-bench-ui-"))
    with redis_server(tmp) as server:
        settings = Settings(
            _env_file=None,
            redis_url=server.url,
            api_keys=SecretStr(",".join(f"{t}:{t}-key-0123456789" for t in TENANTS)),
            admin_keys=SecretStr(ADMIN),
        )
        async with Redis.from_url(server.url) as redis:
            store = JobStore.from_settings(redis, settings)
            failed = await populate(store, settings, count)
            items = [
                {
                    "custom_id": f"c{n}",
                    "params": {
                        "model": MODELS[0],
                        "max_tokens": 20,
                        "messages": [{"role": "user", "content": "hi"}],
                    },
                }
                for n in range(1000)
            ]
            batch = await Batches(redis, store, settings).create(
                "acme", BatchCreate.model_validate({"requests": items})
            )
        port = free_port()
        server_ = uvicorn.Server(
            uvicorn.Config(create_app(settings), port=port, log_level="warning")
        )
        task = asyncio.create_task(server_.serve())
        while not server_.started:  # noqa: ASYNC110  # uvicorn exposes a flag, not an event
            await asyncio.sleep(0.01)
        rows = []
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            form = await http.get("/ui/login")
            token = re.search(r'name="login_token" value="([^"]+)"', form.text)
            assert token is not None
            await http.post("/ui/login", data={"login_token": token.group(1), "api_key": ADMIN})
            for label, path in PAGES(failed, batch.id):
                times = await timed(http, path, samples)
                p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
                rows.append([label, path, round(statistics.median(times), 1), round(p99, 1)])
        server_.should_exit = True
        await task
    return rows


def PAGES(failed: str, batch_id: str) -> list[tuple[str, str]]:  # noqa: N802  # a table
    return [
        ("overview", "/ui"),
        ("overview fragment (polled every 2 s)", "/ui/part/overview"),
        ("jobs, first page", "/ui/jobs"),
        ("jobs, status=failed", "/ui/jobs?status=failed"),
        ("jobs, model=claude-opus-4-1", "/ui/jobs?model=claude-opus-4-1"),
        ("jobs, tenant + status", "/ui/jobs?tenant=globex&status=retrying"),
        ("jobs, error_type (no index: bounded read)", "/ui/jobs?error_type=rate_limit_error"),
        ("jobs, page at offset 50,000", "/ui/jobs?cursor=50000"),
        ("jobs, batch filter", f"/ui/jobs?batch={batch_id}"),
        ("job page (failed: request kept)", f"/ui/jobs/{failed}"),
        ("failures (groups of the newest 5,000)", "/ui/failures"),
        ("batches", "/ui/batches"),
        ("batch page", f"/ui/batches/{batch_id}"),
    ]


async def main() -> None:
    rows = await page_times()
    print("| page | path | p50 ms | p99 ms |\n|---|---|---|---|")
    for row in rows:
        print(f"| {' | '.join(str(x) for x in row)} |")


if __name__ == "__main__":
    asyncio.run(main())
