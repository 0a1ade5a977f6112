"""Spend today per tenant and model, against the tenants' budgets (msgq.tenancy.budgets keeps
both)."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from msgq.http.deps import state_of
from msgq.http.ui.session import Session
from msgq.tenancy.budgets import Budgets
from msgq.tenancy.tenants import load_tenants


async def spend_today(request: Request, session: Session) -> list[dict[str, Any]]:
    """One row per tenant in scope: spent today (by model), the day's budget and what is left."""
    state = state_of(request)
    budgets = Budgets(state.redis, state.settings.keys)
    configured = load_tenants(state.settings.tenants_file)
    if session.scope is not None:
        names = [session.scope]
    else:
        known = set(await budgets.tenants()) | set(configured.names()) | set(state.keys.values())
        names = sorted(known)
    rows = []
    for tenant in names:
        usage = await budgets.usage(tenant, configured.get(tenant))
        usage["used_pct"] = used_pct(usage["spent_today_usd"], usage["budget_usd_day"])
        rows.append(usage)
    return rows


def used_pct(spent: object, budget: object) -> int | None:
    """Share of the day's budget spent, for the meter (None: no budget)."""
    if not isinstance(budget, int | float) or budget <= 0 or not isinstance(spent, int | float):
        return None
    return min(100, round(100 * spent / budget))
