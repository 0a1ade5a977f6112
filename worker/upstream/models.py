"""Read the Models API (`GET /v1/models`, every page) into the fleet's catalog in Redis, at
start and then every `models_refresh_s`. Any worker may do it; the last read wins.

A failed read is logged and leaves the previous copy (or none) in place: validation then
relies on the copy it has, and on schemas/models.toml, never on a guess.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import structlog

from msgq.errors import InvalidResponseError, UpstreamError
from msgq.model_catalog import Catalog, store_catalog
from worker.services import Deps
from worker.upstream.classify import classify

log = structlog.get_logger("msgq.models")
PAGE_LIMIT = 1000
MAX_PAGES = 100  # 100,000 models: a bound, so a cursor that never ends cannot loop forever


async def fetch_models(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Every model the API lists, following `after_id` while `has_more`."""
    models: list[dict[str, Any]] = []
    after: str | None = None
    for _ in range(MAX_PAGES):
        params: dict[str, Any] = {"limit": PAGE_LIMIT}
        if after:
            params["after_id"] = after
        response = await http.get("/v1/models", params=params)
        if response.status_code != 200:
            raise classify(response)
        page = orjson.loads(response.content)
        if not isinstance(page, dict) or not isinstance(page.get("data"), list):
            msg = "GET /v1/models answered 200 with a body that is not a page of models"
            raise InvalidResponseError(msg, status_code=200)
        models += [m for m in page["data"] if isinstance(m, dict) and m.get("id")]
        after = page.get("last_id")
        if not page.get("has_more") or not after:
            break
    return models


async def refresh(deps: Deps) -> Catalog | None:
    """One read into Redis; None (logged) when the API could not be read."""
    try:
        models = await fetch_models(deps.http)
    except (UpstreamError, httpx.HTTPError, orjson.JSONDecodeError) as exc:
        log.warning("models.refresh_failed", error=f"{type(exc).__name__}: {exc}"[:300])
        return None
    catalog = await store_catalog(deps.redis, models, base_url=deps.settings.anthropic_base_url)
    deps.catalog.invalidate()
    log.info("models.refreshed", models=len(models))
    return catalog


async def run_forever(deps: Deps) -> None:
    """At start, then every `models_refresh_s`; a failure is retried after a minute."""
    while True:
        try:
            done = await refresh(deps)
        except Exception as exc:  # Redis down: keep the loop alive, try again later
            log.warning("models.refresh_failed", error=type(exc).__name__)
            done = None
        wait_s = (
            deps.settings.models_refresh_s if done else min(60.0, deps.settings.models_refresh_s)
        )
        await asyncio.sleep(wait_s)
