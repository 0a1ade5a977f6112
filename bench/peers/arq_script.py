"""Plain arq, as a user writes it: one aiohttp session, a task that POSTs the Messages request
and returns the reply (arq stores it). Runs in the peer's own venv, not msgq's.

`python arq_script.py worker` runs the worker (max_jobs 512; ARQ_POLL_DELAY, arq's default
0.5 s unless set); `python arq_script.py produce N` enqueues N jobs and prints, once all ended,
{"ok", "first_start", "last_end"} as JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import aiohttp
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import run_worker

REDIS = RedisSettings.from_dsn(os.environ["REDIS_URL"])
HEADERS = {
    "x-api-key": os.environ["ANTHROPIC_API_KEY"],
    "anthropic-version": "2023-06-01",
    "content-type": "application/json",
}


async def startup(ctx: dict[str, Any]) -> None:
    connector = aiohttp.TCPConnector(limit=512)
    ctx["session"] = aiohttp.ClientSession(
        os.environ["SIM_URL"], connector=connector, headers=HEADERS
    )


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["session"].close()


async def call(ctx: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    started = time.time()
    async with ctx["session"].post("/v1/messages", json=body) as response:
        response.raise_for_status()
        message = await response.json()
    return {"t0": started, "t1": time.time(), "message": message}


class WorkerSettings:
    functions = [call]  # noqa: RUF012 - arq reads class attributes
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = REDIS
    max_jobs = 512
    poll_delay = float(os.environ.get("ARQ_POLL_DELAY", "0.5"))


async def produce(n: int) -> None:
    template = json.loads(os.environ["PEER_BODY"])
    pool = await create_pool(REDIS)
    jobs = []
    for chunk in range(0, n, 500):
        batch = [
            {**template, "messages": [{"role": "user", "content": f"call {i}"}]}
            for i in range(chunk, min(n, chunk + 500))
        ]
        jobs += await asyncio.gather(*(pool.enqueue_job("call", b) for b in batch))
    results = []
    for job in jobs:
        try:
            results.append(await job.result(timeout=900, poll_delay=0.2))
        except Exception:  # a failed job counts as not ok
            continue
    print(
        json.dumps(
            {
                "ok": len(results),
                "first_start": min(r["t0"] for r in results),
                "last_end": max(r["t1"] for r in results),
            }
        )
    )
    await pool.aclose()


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        run_worker(WorkerSettings)  # type: ignore[arg-type]
    else:
        asyncio.run(produce(int(sys.argv[2])))
