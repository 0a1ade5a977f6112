"""What every job needs, built once per worker process and carried in arq's ctx."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from redis.asyncio import Redis

from msgq.jobs.store import JobStore
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

    @property
    def http(self) -> httpx.AsyncClient:
        """A client for the occasional call (the Batches API): the first of `upstream`'s."""
        return self.upstream.clients[0]
