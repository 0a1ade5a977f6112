"""The HTTP API app: jobs, Message Batches, health and metrics. FastAPI + uvicorn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from msgq.batches import Batches
from msgq.client import Client
from msgq.connections import connect
from msgq.http import (
    batch_routes,
    errors,
    events_routes,
    job_routes,
    ops_routes,
    retry_routes,
    ui,
    usage_routes,
)
from msgq.http.auth import load_keys
from msgq.http.body_limit import BodyLimit
from msgq.http.deps import AppState
from msgq.http.dropin import passthrough
from msgq.http.dropin import routes as dropin_routes
from msgq.http.metrics import CountRequests
from msgq.http.request_ids import RequestIds
from msgq.http.streams import DROPIN_CALLS, StreamLimit
from msgq.jobs.endings import Endings
from msgq.jobs.store import JobStore
from msgq.logs import register_secret
from msgq.settings import Settings
from schemas.api import ErrorBody

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 413, 422, 429)
}


def create_app(settings: Settings) -> FastAPI:
    """Build the app; Redis is connected in the lifespan, so importing this module is free."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = connect(settings)
        store = JobStore.from_settings(redis, settings)
        client = Client(redis, settings)
        endings = Endings(redis, store)
        await endings.start()
        app.state.msgq = AppState(
            settings=settings,
            keys=load_keys(settings),
            redis=redis,
            client=client,
            store=store,
            batches=Batches(redis, store, settings),
            endings=endings,
            streams=StreamLimit(settings.max_streams_per_tenant),
            dropin_calls=StreamLimit(settings.max_dropin_calls_per_tenant, DROPIN_CALLS),
        )
        for key in app.state.msgq.keys:
            register_secret(key)
        app.state.passthrough = passthrough.Passthrough(settings)
        yield
        await app.state.passthrough.aclose()
        await endings.stop()
        await client.close()

    app = FastAPI(
        title="msgq",
        version="0.1.0",
        lifespan=lifespan,
        responses=ERRORS,
        description="A job queue for the Anthropic Messages API.",
    )
    app.add_middleware(CountRequests)
    app.add_middleware(BodyLimit, default_bytes=settings.max_body_bytes)
    app.add_middleware(RequestIds)  # outermost: error answers get one too
    errors.register(app)

    app.include_router(ops_routes.router)
    app.include_router(job_routes.router)
    app.include_router(retry_routes.router)
    app.include_router(events_routes.router)
    app.include_router(batch_routes.router)
    app.include_router(dropin_routes.router)  # drop-in: POST /v1/messages
    app.include_router(passthrough.router)
    app.include_router(usage_routes.router)
    app.include_router(ui.router)  # the dashboard, /ui
    return app
