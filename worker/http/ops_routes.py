"""`/healthz` and `/metrics`: no key needed, for load balancers and Prometheus."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import REGISTRY, generate_latest
from redis.exceptions import RedisError

from worker.fleet_metrics import QUEUE_DEPTH
from worker.http.deps import State
from worker.keys import health_check_key

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz(state: State) -> JSONResponse:
    """200 while Redis answers; `workers` says whether a worker checked in recently."""
    try:
        await state.redis.ping()
        workers = bool(await state.redis.exists(health_check_key(state.settings.queue_name)))
    except RedisError:
        return JSONResponse({"status": "down", "redis": False, "workers": None}, 503)
    return JSONResponse(
        {"status": "ok" if workers else "degraded", "redis": True, "workers": workers}
    )


@router.get("/metrics")
async def metrics(state: State) -> Response:
    QUEUE_DEPTH.set(await state.redis.zcard(state.settings.queue_name))
    return Response(generate_latest(REGISTRY), media_type="text/plain; version=0.0.4")
