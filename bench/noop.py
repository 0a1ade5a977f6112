"""arq itself, doing nothing: the reference ceiling for any arq-based queue on this machine."""

from __future__ import annotations

import time
from typing import Any

from arq import Worker, create_pool
from arq.connections import RedisSettings


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def arq_noop_jobs_per_s(redis_url: str, n: int, concurrency: int) -> float:
    settings = RedisSettings.from_dsn(redis_url)
    pool = await create_pool(settings)
    for _ in range(n):
        await pool.enqueue_job("noop")
    worker = Worker(
        [noop],
        redis_pool=pool,
        burst=True,
        max_jobs=concurrency,
        poll_delay=0.01,
        handle_signals=False,
        keep_result=0,
    )
    started = time.perf_counter()
    await worker.main()
    elapsed = time.perf_counter() - started
    await pool.aclose()
    return n / elapsed
