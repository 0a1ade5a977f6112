"""Read the Models API (`GET /v1/models`, every page). `worker.background` keeps the fleet's
copy in Redis from it."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from msgq.errors import InvalidResponseError
from worker.upstream.classify import classify_response

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
            raise classify_response(response)
        page = orjson.loads(response.content)
        if not isinstance(page, dict) or not isinstance(page.get("data"), list):
            msg = "GET /v1/models answered 200 with a body that is not a page of models"
            raise InvalidResponseError(msg, status_code=200)
        models += [m for m in page["data"] if isinstance(m, dict) and m.get("id")]
        after = page.get("last_id")
        if not page.get("has_more") or not after:
            break
    return models
