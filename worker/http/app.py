"""The HTTP API: jobs, Message Batches (batch_routes), health and metrics. FastAPI + uvicorn."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from schemas import JOB_ID_PATTERN, JobRecord, JobStatus
from schemas.api import ErrorBody, JobCreate, JobPage
from worker.client import Client
from worker.errors import InvalidJobError, JobNotFoundError
from worker.http.auth import load_keys
from worker.http.batch_routes import router as batch_router
from worker.http.body_limit import BodyLimit
from worker.http.deps import (
    ApiError,
    AppState,
    DoneNotifier,
    error_response,
    public_id,
    public_record,
    require_tenant,
    state_of,
)
from worker.logs import register_secret
from worker.settings import Settings

Tenant = Annotated[str, Depends(require_tenant)]
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 413, 422)
}
_JOB_ID = re.compile(JOB_ID_PATTERN)


def create_app(settings: Settings) -> FastAPI:
    """Build the app; Redis is connected in the lifespan, so importing this module is free."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = Redis.from_url(settings.redis_url)
        client = Client(redis, settings)
        notifier = DoneNotifier(redis)
        notifier.start()
        app.state.msgq = AppState(settings, load_keys(settings), client, notifier)
        for key in app.state.msgq.keys:
            register_secret(key)
        yield
        await notifier.stop()
        await client.close()

    app = FastAPI(
        title="msgq",
        version="0.1.0",
        lifespan=lifespan,
        responses=ERRORS,
        description="A job queue for the Anthropic Messages API.",
    )
    app.add_middleware(BodyLimit, default_bytes=settings.max_body_bytes)
    _add_handlers(app)
    _add_ops_routes(app)
    app.include_router(_jobs_router())
    app.include_router(batch_router)
    return app


def _add_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(ApiError(400, "invalid_request_error", "body is not valid JSON"))
        rows = [
            {
                "loc": ".".join(str(p) for p in e["loc"][1:]) or "body",
                "msg": str(e["msg"]),
                "type": str(e["type"]),
            }
            for e in errors
        ]
        summary = "; ".join(f"{r['loc']}: {r['msg']}" for r in rows[:3])
        return error_response(ApiError(422, "invalid_request_error", summary, rows))

    @app.exception_handler(RedisError)
    async def redis_down(_: Request, exc: RedisError) -> JSONResponse:
        return error_response(ApiError(503, "overloaded_error", "the queue is unavailable"))


def _add_ops_routes(app: FastAPI) -> None:
    registry = CollectorRegistry()
    requests = Counter(
        "msgq_api_requests_total", "HTTP requests", ["method", "status"], registry=registry
    )
    depth = Gauge("msgq_queue_depth", "jobs waiting or deferred in the queue", registry=registry)

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        requests.labels(request.method, str(response.status_code)).inc()
        return response

    @app.get("/healthz", tags=["ops"])
    async def healthz(request: Request) -> JSONResponse:
        """200 while Redis answers; `workers` says whether a worker checked in recently."""
        state = state_of(request)
        try:
            await state.client.redis.ping()
            workers = bool(
                await state.client.redis.exists(state.settings.queue_name + ":health-check")
            )
        except RedisError:
            return JSONResponse({"status": "down", "redis": False, "workers": None}, 503)
        return JSONResponse(
            {"status": "ok" if workers else "degraded", "redis": True, "workers": workers}
        )

    @app.get("/metrics", tags=["ops"])
    async def metrics(request: Request) -> Response:
        state = state_of(request)
        depth.set(await state.client.redis.zcard(state.settings.queue_name))
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")


def _owned(record: JobRecord | None, tenant: str, job_id: str) -> JobRecord:
    """Another tenant's job answers 404, exactly like a job that does not exist."""
    if record is None or record.tenant != tenant:
        raise ApiError(404, "not_found_error", f"no job {job_id!r}")
    return record


def _internal(tenant: str, job_id: str) -> str:
    if not _JOB_ID.match(job_id):
        raise ApiError(404, "not_found_error", f"no job {job_id!r}")
    return f"{tenant}:{job_id}"


def _jobs_router() -> APIRouter:
    router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

    @router.post("", status_code=202, summary="Enqueue a Messages request")
    async def create_job(body: JobCreate, tenant: Tenant, request: Request) -> JSONResponse:
        """202 with the record; 200 with the existing record when `id` was seen before."""
        client = state_of(request).client
        try:
            job = await client.submit(
                body.request,
                job_id=body.id,
                metadata=body.metadata,
                deadline=body.deadline,
                max_attempts=body.max_attempts,
                tenant=tenant,
            )
        except InvalidJobError as exc:
            raise ApiError(422, "invalid_request_error", str(exc), exc.errors) from None
        return JSONResponse(public_record(job.record), status_code=202 if job.created else 200)

    @router.get("", summary="List the tenant's jobs, newest first")
    async def list_jobs(
        tenant: Tenant,
        request: Request,
        status: JobStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 20,
        after_id: str | None = None,
    ) -> JobPage:
        after = _internal(tenant, after_id) if after_id else None
        records, more = await state_of(request).client.store.page(
            tenant=tenant, status=status, limit=limit, after_id=after
        )
        data = [public_record(r) for r in records]
        return JobPage.model_validate(
            {
                "data": data,
                "has_more": more,
                "first_id": public_id(records[0]) if records else None,
                "last_id": public_id(records[-1]) if records else None,
            }
        )

    @router.get("/{job_id}", summary="A job's record; ?wait=N long-polls until it ends")
    async def get_job(
        job_id: str,
        tenant: Tenant,
        request: Request,
        wait: Annotated[float, Query(ge=0, le=60)] = 0,
    ) -> JSONResponse:
        state, internal = state_of(request), _internal(tenant, job_id)
        record = _owned(await state.client.store.get(internal), tenant, job_id)
        if wait > 0 and not record.status.terminal:
            record = _owned(await state.notifier.wait(state.client, internal, wait), tenant, job_id)
        return JSONResponse(public_record(record))

    @router.delete("/{job_id}", summary="Cancel a queued, retrying or in-progress job")
    async def cancel_job(job_id: str, tenant: Tenant, request: Request) -> JSONResponse:
        client, internal = state_of(request).client, _internal(tenant, job_id)
        _owned(await client.store.get(internal), tenant, job_id)
        try:
            record = await client.cancel(internal)
        except JobNotFoundError:
            raise ApiError(404, "not_found_error", f"no job {job_id!r}") from None
        return JSONResponse(public_record(record))

    return router
