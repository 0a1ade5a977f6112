"""`/healthz` and `/metrics`: no key needed, for load balancers and Prometheus (per-tenant series
only with MSGQ_METRICS_TENANTS=true: see msgq.http.metrics)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from redis.exceptions import RedisError

from msgq.http.deps import State
from msgq.http.metrics import exposition

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz(state: State) -> JSONResponse:
    """200 while Redis answers; `workers` says whether a worker checked in recently."""
    try:
        await state.redis.ping()
        workers = bool(await state.redis.exists(state.settings.keys.health_check_key))
    except RedisError:
        return JSONResponse({"status": "down", "redis": False, "workers": None}, 503)
    return JSONResponse(
        {"status": "ok" if workers else "degraded", "redis": True, "workers": workers}
    )


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> Response:
    """Browsers ask for it on every page, the API's JSON included: an icon, not a 404 in the
    log of each visit."""
    body = resources.files("msgq.http.ui").joinpath("static", "favicon.ico").read_bytes()
    return Response(body, media_type="image/x-icon", headers={"cache-control": "max-age=86400"})


@router.get("/metrics")
async def metrics(state: State) -> Response:
    text = await exposition(state.redis, state.settings)
    return Response(text, media_type="text/plain; version=0.0.4")
