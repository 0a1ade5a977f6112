"""The rest of what an SDK calls besides create: `POST /v1/messages/count_tokens`, passed to
the API as is (it is free, has its own rate limits and is not a job), and `GET /v1/models`,
`GET /v1/models/{id}`, answered from the fleet's copy of the Models API (msgq.model_catalog),
so a thousand SDK clients listing models cost the API nothing. Without a copy yet (no worker
has read the Models API), the models routes pass through too.

Calls to the API use msgq's key, never the caller's (a msgq tenant key means nothing there);
the API's status, body and `request-id` come back unchanged.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import httpx
import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from msgq.http.deps import State, Tenant
from msgq.http.errors import ApiError
from msgq.http.versions import Headers
from msgq.model_catalog import load_catalog
from msgq.settings import Settings

MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
router = APIRouter(prefix="/v1", tags=["drop-in"])
SNAPSHOT_DATE = re.compile(r"-\d{8}$")  # claude-haiku-4-5-20251001 answers to claude-haiku-4-5


class Passthrough:
    """One pooled client to the API for this process (closed with the app)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.http = httpx.AsyncClient(
            base_url=settings.anthropic_base_url.rstrip("/"),
            timeout=httpx.Timeout(settings.request_timeout_s, connect=settings.connect_timeout_s),
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    def headers(
        self, version: str, betas: list[str] | None, others: dict[str, str] | None = None
    ) -> dict[str, str]:
        """msgq's key, the caller's version and betas, and any other anthropic-* header the
        caller sent (workspace, user profile, ...), as the drop-in's jobs carry them."""
        headers = {**(others or {}), "anthropic-version": version}
        headers["content-type"] = "application/json"
        if self.settings.anthropic_api_key is not None:
            headers["x-api-key"] = self.settings.anthropic_api_key.get_secret_value()
        if betas:
            headers["anthropic-beta"] = ",".join(betas)
        return headers

    async def forward(self, method: str, path: str, headers: dict[str, str], **kw: Any) -> Response:
        try:
            reply = await self.http.request(method, path, headers=headers, **kw)
        except httpx.TimeoutException:
            raise ApiError(
                504, "the API did not answer in time", error_type="timeout_error"
            ) from None
        except httpx.TransportError as exc:
            raise ApiError(502, f"cannot reach the API ({type(exc).__name__})") from None
        kept = {k: v for k, v in reply.headers.items() if k in ("request-id", "retry-after")}
        return Response(
            reply.content,
            status_code=reply.status_code,
            media_type=reply.headers.get("content-type", "application/json"),
            headers=kept,
        )


def passthrough(request: Request) -> Passthrough:
    found: Passthrough = request.app.state.passthrough
    return found


@router.post("/messages/count_tokens", summary="The API's count of a request's input tokens")
async def count_tokens(request: Request, _tenant: Tenant, headers: Headers) -> Response:
    """The body goes to the API as sent; its answer comes back as the API gave it."""
    version = headers.required_version(request)
    api = passthrough(request)
    content = await request.body()
    others = dict(headers.others or {})
    if headers.workspace_id:
        others["anthropic-workspace-id"] = headers.workspace_id
    sent = api.headers(version, headers.betas, others)
    return await api.forward("POST", "/v1/messages/count_tokens", sent, content=content)


@router.get("/models", summary="Models, newest first, from the fleet's copy of the Models API")
async def list_models(
    request: Request,
    _tenant: Tenant,
    state: State,
    headers: Headers,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    after_id: str | None = None,
    before_id: str | None = None,
) -> Response:
    catalog = await load_catalog(state.redis, state.settings.keys)
    if catalog is None:
        api = passthrough(request)
        params = {k: v for k, v in request.query_params.items()}
        version = headers.required_version(request)
        return await api.forward("GET", "/v1/models", api.headers(version, None), params=params)
    models = _page(catalog.models, limit=limit, after_id=after_id, before_id=before_id)
    page = {
        "data": models[0],
        "has_more": models[1],
        "first_id": models[0][0]["id"] if models[0] else None,
        "last_id": models[0][-1]["id"] if models[0] else None,
    }
    return Response(orjson.dumps(page), media_type="application/json")


@router.get("/models/{model_id}", summary="One model (an alias finds its dated snapshot)")
async def get_model(
    model_id: str, request: Request, _tenant: Tenant, state: State, headers: Headers
) -> Response:
    if not MODEL_ID.fullmatch(model_id):  # never forwarded: no model is named like that
        raise ApiError(404, f"model: {model_id[:128]!r}")
    catalog = await load_catalog(state.redis, state.settings.keys)
    if catalog is None:
        api = passthrough(request)
        version = headers.required_version(request)
        return await api.forward("GET", f"/v1/models/{model_id}", api.headers(version, None))
    exact = [m for m in catalog.models if m.get("id") == model_id]
    alias = [m for m in catalog.models if SNAPSHOT_DATE.sub("", str(m.get("id"))) == model_id]
    if not exact and not alias:
        raise ApiError(404, f"model: {model_id}")
    return Response(orjson.dumps((exact or alias)[0]), media_type="application/json")


def _page(
    models: list[dict[str, Any]], *, limit: int, after_id: str | None, before_id: str | None
) -> tuple[list[dict[str, Any]], bool]:
    """The API's cursor paging over the stored order (newest first, as the API lists them)."""
    ids = [m.get("id") for m in models]
    if after_id is not None:
        start = ids.index(after_id) + 1 if after_id in ids else len(models)
        chosen = models[start:]
        return chosen[:limit], len(chosen) > limit
    if before_id is not None:
        end = ids.index(before_id) if before_id in ids else 0
        chosen = models[:end]
        return chosen[-limit:], len(chosen) > limit
    return models[:limit], len(models) > limit
