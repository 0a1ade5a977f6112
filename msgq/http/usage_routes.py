"""`GET /v1/usage`: the calling tenant's spend today and this month, against its budgets."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from msgq.http.deps import State, Tenant
from msgq.tenancy.budgets import Budgets
from msgq.tenancy.tenants import load_tenants

router = APIRouter(prefix="/v1/usage", tags=["usage"])


@router.get("", summary="The calling tenant's spend and remaining budget (USD)")
async def usage(tenant: Tenant, state: State) -> dict[str, Any]:
    config = load_tenants(state.settings.tenants_file).get(tenant)
    return await Budgets(state.redis, state.settings.keys).usage(tenant, config)
