"""A worker's background tasks, started and stopped as one (`Background`): the fleet's
dispatcher, reconciler, batch lane and webhook deliveries (each acts on one worker at a time,
under its lease), this worker's announcement and gauges, and the fleet's copy of the Models API.

Each loop survives its own errors; stopping cancels them all and takes this worker out of the
fleet's registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import orjson
import structlog
from redis.exceptions import RedisError

from msgq.cancel import cancel_and_wait
from msgq.errors import UpstreamError
from msgq.model_catalog import Catalog, store_catalog
from msgq.tenancy import policy
from worker import metrics
from worker.dispatch.dispatcher import Dispatcher
from worker.dispatch.window import announce
from worker.fleet_lock import FleetLock
from worker.lane.lane import BatchLane
from worker.reconciler import Reconciler
from worker.services import Services
from worker.upstream.models import fetch_models
from worker.webhooks import WebhookDispatcher

log = structlog.get_logger("msgq.worker")
models_log = structlog.get_logger("msgq.models")
POLICY_EVERY_S = 60.0
ANNOUNCE_EVERY_S = 1.0
ANNOUNCE_IDLE_S = 5.0  # nothing running and nothing changed: well inside WORKER_FRESH_MS (15 s)
GAUGES_EVERY_S = 5.0
STOP_WAIT_S = 5.0  # for the cancelled loops to end before their leases are given up


@dataclass
class Background:
    """`Background(services, running_jobs).start()` at start-up, `await .stop()` at shutdown."""

    services: Services
    running_jobs: Callable[[], int]  # this worker's jobs in flight, for its announcement
    worker_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    leases: list[FleetLock] = field(default_factory=list)  # the fleet-wide leases it may hold

    def start(self) -> None:
        s = self.services
        reconciler = Reconciler(s.redis, s.store, s.settings, s.ledgers)
        lane = BatchLane(s)
        # Always one per fleet: with the scheduler off it only drains what producers placed.
        dispatcher = Dispatcher(s.redis, s.store, s.settings, s.limiter)
        self.leases = [reconciler.lock, lane.lock, dispatcher.lock]
        loops: list[Awaitable[None]] = [
            self._gauges(),
            reconciler.run_forever(),
            lane.run_forever(),
            dispatcher.run_forever(),
            self._announce(),
            WebhookDispatcher(s.redis, s.store, s.settings).run_forever(),
            self._models(),
        ]
        self.tasks = [asyncio.ensure_future(loop) for loop in loops]

    async def stop(self) -> None:
        """Cancel every loop (a webhook attempt cut short is delivered again when its lease
        ends), give up the fleet's leases this worker holds once its loops have ended, and
        leave the fleet's registry."""
        await cancel_and_wait(self.tasks, STOP_WAIT_S)
        with contextlib.suppress(RedisError, OSError):
            for lease in self.leases:
                await lease.release()
            await self.services.redis.hdel(
                self.services.settings.keys.fleet_workers, self.worker_id
            )  # type: ignore[misc]  # redis-py stubs

    async def _announce(self) -> None:
        """Every second (every 5 s while it runs nothing and nothing changed): this worker's
        slots for the dispatcher's sizing (and its adaptive limit, for the dashboard), and
        (every minute) the fleet policy for producers."""
        s = self.services
        published_at = -POLICY_EVERY_S
        said: tuple[int, int, int | None] | None = None
        said_at = 0.0
        while True:
            try:
                slots, limit, running = (
                    s.settings.max_jobs,
                    s.concurrency.limit,
                    self.running_jobs(),
                )
                idle = said == (slots, 0, limit) and running == 0
                if not idle or time.monotonic() - said_at >= ANNOUNCE_IDLE_S:
                    await announce(s.redis, s.settings.keys, self.worker_id, slots, running, limit)
                    said, said_at = (slots, running, limit), time.monotonic()
                if time.monotonic() - published_at >= POLICY_EVERY_S:
                    await policy.publish(s.redis, s.settings)
                    published_at = time.monotonic()
            except Exception as exc:
                log.warning("worker.announce_failed", error=type(exc).__name__)
            await asyncio.sleep(ANNOUNCE_EVERY_S)

    async def _gauges(self) -> None:
        """This worker's own gauges; the fleet's (queue depth, pause) are `msgq api`'s alone."""
        while True:
            metrics.CONCURRENCY.set(self.services.concurrency.limit)
            await asyncio.sleep(GAUGES_EVERY_S)

    async def _models(self) -> None:
        """The Models API into the fleet's catalog at start, then every `models_refresh_s`; a
        failure is retried after a minute. Any worker may do it; the last read wins."""
        refresh_s = self.services.settings.models_refresh_s
        while True:
            try:
                done = await refresh_models(self.services)
            except Exception as exc:  # Redis down: keep the loop alive, try again later
                models_log.warning("models.refresh_failed", error=type(exc).__name__)
                done = None
            await asyncio.sleep(refresh_s if done else min(60.0, refresh_s))


async def refresh_models(services: Services) -> Catalog | None:
    """One read into Redis; None (logged) when the API could not be read. A failed read leaves
    the previous copy (or none) in place: validation then relies on the copy it has, and on
    schemas/models.toml, never on a guess."""
    try:
        models = await fetch_models(services.http)
    except (UpstreamError, httpx.HTTPError, orjson.JSONDecodeError) as exc:
        models_log.warning("models.refresh_failed", error=f"{type(exc).__name__}: {exc}"[:300])
        return None
    base_url = services.settings.anthropic_base_url
    catalog = await store_catalog(services.redis, services.settings.keys, models, base_url=base_url)
    services.catalog.invalidate()
    models_log.info("models.refreshed", models=len(models))
    return catalog
