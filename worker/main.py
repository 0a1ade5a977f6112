"""The msgq worker process: msgq's task and lifecycle hooks on the queue's loop
(`build_worker`), and what starts and stops with it (`startup`, `shutdown`)."""

from __future__ import annotations

import functools
from typing import Any

import structlog
from prometheus_client import start_http_server

from msgq.logs import register_secret
from msgq.partitions import PartitionClients, check_partitions
from msgq.settings import Settings
from msgq.tenancy.spend_moves import move_spend_to_tenant_tags
from worker import tracing
from worker.background import Background
from worker.job import task
from worker.job.run import fleet_reads, prefetch_reads
from worker.queue import build
from worker.queue.hooks import Ctx, Hooks
from worker.queue.loop import MsgqWorker
from worker.services import SERVICES, Services

__all__ = ["MsgqWorker", "build_worker"]

log = structlog.get_logger("msgq.worker")
BACKGROUND = "background"  # the worker context's key for its `Background`


def build_worker(
    settings: Settings, *, burst: bool = False, handle_signals: bool = True, **overrides: Any
) -> MsgqWorker:
    """A worker for `settings`. `overrides`: arq's own options, for tests and benchmarks."""
    hooks = Hooks(
        run=task.run_message,
        startup=startup,
        shutdown=shutdown,
        refused=task.on_refused,
        prefetch=functools.partial(prefetch_reads, settings.keys),
        fleet_reads=fleet_reads(settings.keys),
    )
    return build.build_worker(
        settings, hooks, burst=burst, handle_signals=handle_signals, **overrides
    )


async def startup(ctx: Ctx) -> None:
    settings: Settings = ctx["settings"]
    if settings.anthropic_api_key is not None:
        register_secret(settings.anthropic_api_key.get_secret_value())
    # Before this worker announces itself: the partition count its jobs were written with.
    await check_partitions(PartitionClients(ctx["redis"], settings.keys), settings.keys)
    await move_spend_to_tenant_tags(ctx["redis"], settings.keys)  # from an earlier release
    services = ctx[SERVICES] = Services.build(settings, ctx["redis"])
    background = ctx[BACKGROUND] = Background(services, ctx.get("running_jobs", lambda: 0))
    background.start()
    if settings.metrics_port:
        start_http_server(settings.metrics_port)
    tracing.configure(settings)  # only if the OTEL_* variables ask for it
    log.info("worker.started", base_url=settings.anthropic_base_url, max_jobs=settings.max_jobs)


async def shutdown(ctx: Ctx) -> None:
    background: Background | None = ctx.get(BACKGROUND)
    if background is not None:
        await background.stop()
    services: Services | None = ctx.get(SERVICES)
    if services is not None:
        await services.aclose()
    tracing.shutdown()
    log.info("worker.stopped")
