"""What every job needs, built once per worker process and carried in arq's ctx."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from redis.asyncio import Redis

from worker.runtime.concurrency import AdaptiveConcurrency
from worker.runtime.ratelimit import RateLimiter
from worker.settings import Settings
from worker.store import JobStore


@dataclass
class Deps:
    settings: Settings
    store: JobStore
    http: httpx.AsyncClient
    redis: Redis
    limiter: RateLimiter
    concurrency: AdaptiveConcurrency
