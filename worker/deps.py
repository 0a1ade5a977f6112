"""What every job needs, built once per worker process and carried in arq's ctx."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from redis.asyncio import Redis

from msgq.jobs.store import JobStore
from msgq.model_catalog import CatalogReader
from msgq.settings import Settings
from worker.concurrency import AdaptiveConcurrency
from worker.ratelimit import RateLimiter
from worker.upstream import UpstreamClients


@dataclass
class Deps:
    settings: Settings
    store: JobStore
    upstream: UpstreamClients  # the Messages calls: `upstream.pick()` per call
    redis: Redis
    limiter: RateLimiter
    concurrency: AdaptiveConcurrency
    catalog: CatalogReader = field(init=False)  # the fleet's copy of GET /v1/models

    def __post_init__(self) -> None:
        self.catalog = CatalogReader(self.redis)

    @property
    def http(self) -> httpx.AsyncClient:
        """A client for the occasional call (the Batches API): the first of `upstream`'s."""
        return self.upstream.clients[0]
