"""What every job needs, built once per worker process at start-up (`Services.build`) and kept
in the worker's context under `SERVICES`: settings, the job store, the API clients, Redis, the
fleet limiter and this worker's adaptive concurrency."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from redis.asyncio import Redis

from msgq.group_commit import GroupCommit
from msgq.jobs.store import JobStore
from msgq.model_catalog import CatalogReader
from msgq.settings import Settings
from worker.hold import AnswerHold, Replicas
from worker.job.concurrency import AdaptiveConcurrency
from worker.ledger import Ledgers
from worker.ratelimit import RateLimiter
from worker.upstream.client import Upstream, build_client

SERVICES = "services"  # their key in the worker's context


@dataclass
class Services:
    settings: Settings
    store: JobStore
    upstream: Upstream  # the Messages calls: one aiohttp session (see worker.upstream.client)
    http: httpx.AsyncClient  # the occasional call (Batches and Models APIs)
    redis: Redis
    limiter: RateLimiter
    concurrency: AdaptiveConcurrency
    catalog: CatalogReader = field(init=False)  # the fleet's copy of GET /v1/models
    ledgers: Ledgers = field(init=False)  # every job's reservations (msgq.ledger)
    held: AnswerHold = field(init=False)  # paid-for answers held through a Redis outage

    def __post_init__(self) -> None:
        self.catalog = CatalogReader(self.redis, self.settings.keys)
        # One group commit for the job's writes: record compare-and-sets and ledger steps of
        # every job in flight share round trips (msgq.group_commit).
        group = GroupCommit(self.redis)
        self.store.group = group
        self.ledgers = Ledgers(self.redis, self.limiter, group)
        settings = self.settings
        replicas = Replicas(settings.submit_min_replicas, settings.submit_replica_timeout_ms)
        self.held = AnswerHold(
            settings.answer_hold_s,
            settings.answer_hold_max_bytes,
            replicas if replicas.wanted else None,
        )

    @classmethod
    def build(cls, settings: Settings, redis: Redis) -> Services:
        """In the running loop, as aiohttp requires for `Upstream`."""
        return cls(
            settings,
            JobStore.from_settings(redis, settings),
            Upstream(settings),
            build_client(settings),
            redis,
            RateLimiter.from_settings(redis, settings),
            AdaptiveConcurrency(settings.max_jobs),
        )

    async def aclose(self) -> None:
        await self.upstream.aclose()
        await self.http.aclose()
