"""Run as a separate process by test_ratelimit: acquire as fast as possible, print admissions."""

from __future__ import annotations

import asyncio
import sys
import time

from msgq.connections import connect
from tests.conftest import KEYS
from worker.ratelimit import Limits, RateLimiter


async def hammer(url: str, tries: int, rpm: int, start_at: float) -> int:
    async with connect(url) as redis:
        limiter = RateLimiter(redis, KEYS, {"default": Limits(rpm=rpm)})
        await asyncio.sleep(max(0.0, start_at - time.time()))
        admitted = 0
        for _ in range(tries):
            admission = await limiter.acquire(
                "test-model", input_tokens=1, output_tokens=1, now_ms=int(time.time() * 1000)
            )
            admitted += admission.admitted
        return admitted


if __name__ == "__main__":
    url, tries, rpm, start_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    print(asyncio.run(hammer(url, tries, rpm, start_at)))
