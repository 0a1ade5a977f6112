"""Spend today per tenant and model, against the tenants' budgets (worker.budgets keeps both,
once it lands: until then the overview shows no spend)."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from worker.http.ui.session import Session


async def spend_today(request: Request, session: Session) -> list[dict[str, Any]]:
    """One row per tenant in scope: spent today (by model), the day's budget and what is left."""
    return []
