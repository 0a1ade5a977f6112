"""What the HTTP routes share: the app's services, tenant auth, and public record views."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from redis.asyncio import Redis

from msgq.batches import Batches
from msgq.client import Client
from msgq.http.auth import tenant_for
from msgq.http.errors import ApiError
from msgq.http.streams import StreamLimit
from msgq.jobs.endings import Endings
from msgq.jobs.ids import public_id
from msgq.jobs.store import JobStore
from msgq.settings import Settings
from schemas import JobRecord


@dataclass
class AppState:
    """Built once in the app's lifespan: each route takes the service it needs."""

    settings: Settings
    keys: dict[str, str]
    redis: Redis
    client: Client  # submit and cancel: validation and the enqueue transaction
    store: JobStore  # reads and listing
    batches: Batches
    endings: Endings  # long poll, and SSE's shared subscription
    streams: StreamLimit  # SSE streams open per tenant
    dropin_calls: StreamLimit  # drop-in calls (POST /v1/messages) waiting per tenant


def state_of(request: Request) -> AppState:
    state: AppState = request.app.state.msgq
    return state


async def require_tenant(request: Request) -> str:
    """x-api-key or Authorization: Bearer → tenant; 401 in the API's shape otherwise. (A
    coroutine, as every dependency here: FastAPI runs a plain function in its thread pool, a
    thread hop on every request.)"""
    presented = request.headers.get("x-api-key")
    bearer = request.headers.get("authorization", "")
    if not presented and bearer.lower().startswith("bearer "):
        presented = bearer[7:].strip()
    tenant = tenant_for(state_of(request).keys, presented)
    if tenant is None:
        message = "missing API key" if not presented else "invalid API key"
        raise ApiError(401, message)
    return tenant


async def _state(request: Request) -> AppState:
    return state_of(request)


Tenant = Annotated[str, Depends(require_tenant)]
State = Annotated[AppState, Depends(_state)]


def public_record(record: JobRecord) -> dict[str, Any]:
    data = record.model_dump(mode="json", exclude={"tenant"})
    data["id"] = public_id(record)
    return data
