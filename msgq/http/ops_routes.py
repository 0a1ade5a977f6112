"""`/healthz` and `/metrics`: no key needed, for load balancers and Prometheus."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import REGISTRY, generate_latest
from redis.exceptions import RedisError

from msgq.fleet_metrics import QUEUE_DEPTH, SCHEDULED, TENANT_REMAINING, TENANT_SPEND
from msgq.http.deps import AppState, State
from msgq.keys import SCHED_WHERE, health_check_key
from msgq.tenancy.budgets import Budgets
from msgq.tenancy.tenants import load_tenants

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
    SCHEDULED.set(await state.redis.hlen(SCHED_WHERE))  # type: ignore[misc]
    await _tenant_spend(state)
    return Response(generate_latest(REGISTRY), media_type="text/plain; version=0.0.4")


async def _tenant_spend(state: AppState) -> None:
    """Per-tenant spend today and this month, and what remains of each budget."""
    tenants = load_tenants(state.settings.tenants_file)
    budgets = Budgets(state.redis)
    for tenant in sorted(set(tenants.names()) | set(await budgets.tenants())):
        usage = await budgets.usage(tenant, tenants.get(tenant))
        for period in ("today", "month"):
            TENANT_SPEND.labels(tenant, period).set(float(usage[f"spent_{period}_usd"]))  # type: ignore[arg-type]
            remaining = usage[f"remaining_{period}_usd"]
            if remaining is not None:
                TENANT_REMAINING.labels(tenant, period).set(float(remaining))  # type: ignore[arg-type]
