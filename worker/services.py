"""What every job needs, built once per worker process and carried in arq's ctx."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from redis.asyncio import Redis

from msgq.jobs.store import JobStore
from msgq.model_catalog import CatalogReader
from msgq.settings import Settings
from worker.job.concurrency import AdaptiveConcurrency
from worker.ratelimit import RateLimiter
from worker.upstream.client import Upstream


@dataclass
class Deps:
    settings: Settings
    store: JobStore
    upstream: Upstream  # the Messages calls: one aiohttp session (see worker.upstream.client)
    http: httpx.AsyncClient  # the occasional call (Batches and Models APIs)
    redis: Redis
    limiter: RateLimiter
    concurrency: AdaptiveConcurrency
    catalog: CatalogReader = field(init=False)  # the fleet's copy of GET /v1/models

    def __post_init__(self) -> None:
        self.catalog = CatalogReader(self.redis)
