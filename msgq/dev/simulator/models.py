"""The Models API: `GET /v1/models` (paginated as the API pages) and `GET /v1/models/{id}`.

The models are data (`models.toml`); this module expands each row into the official SDK's
`ModelInfo` shape, capabilities included, so `client.models.list()` and `.retrieve()` parse.
Pages are newest first: `after_id` gives the `limit` models after that one, `before_id` the
`limit` models just before it; `has_more` says whether more lie further in that direction.
"""

from __future__ import annotations

import tomllib
from functools import cache
from importlib import resources
from typing import Any

from aiohttp import web

from msgq.dev.simulator.answers import error_response, gate, json_response, new_request_id
from msgq.dev.simulator.state import STATE

DEFAULT_LIMIT = 20
MAX_LIMIT = 1000
THINKING_TYPES = ("adaptive", "between_tools", "disabled", "enabled")
EFFORT_LEVELS = ("low", "medium", "high", "max")  # required keys; xhigh is optional
STRATEGIES = ("clear_thinking_20251015", "clear_tool_uses_20250919", "compact_20260112")
LIFECYCLES = ("active", "deprecated", "retired")


@cache
def _table() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("models.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


@cache
def rows() -> tuple[dict[str, Any], ...]:
    """Every model row with the defaults filled in, newest first."""
    table = _table()
    merged = [{**table["defaults"], **row} for row in table["models"]]
    return tuple(sorted(merged, key=lambda r: (r["created_at"], r["id"]), reverse=True))


def row_for(model: str) -> dict[str, Any] | None:
    """A model's row by id or alias (`claude-haiku-4-5` is `claude-haiku-4-5-20251001`)."""
    wanted = _table()["aliases"].get(model, model)
    return next((r for r in rows() if r["id"] == wanted), None)


def min_cache_tokens(model: str) -> int:
    """The shortest cacheable prefix; a model the table lacks gets the defaults' value."""
    row = row_for(model)
    return int((row or _table()["defaults"])["min_cache_tokens"])


def _support(flag: bool) -> dict[str, bool]:
    return {"supported": bool(flag)}


def capabilities(row: dict[str, Any]) -> dict[str, Any]:
    """`anthropic.types.ModelCapabilities`, every key present."""
    thinking = set(row["thinking"])
    effort = set(row["effort"])
    strategies = set(row["context_management"])
    effort_shape = {level: _support(level in effort) for level in (*EFFORT_LEVELS, "xhigh")}
    return {
        "batch": _support(row["batch"]),
        "citations": _support(row["citations"]),
        "code_execution": _support(row["code_execution"]),
        "context_management": {
            "supported": bool(strategies),
            **{name: _support(name in strategies) for name in STRATEGIES},
        },
        "effort": {"supported": bool(effort), **effort_shape},
        "image_input": _support(row["image_input"]),
        "pdf_input": _support(row["pdf_input"]),
        "server_tools": {
            "supported": bool(row["web_search"] or row["code_execution_tool"]),
            "code_execution": _support(row["code_execution_tool"]),
            "web_search": _support(row["web_search"]),
        },
        "structured_outputs": _support(row["structured_outputs"]),
        "thinking": {
            "supported": bool(thinking & {"adaptive", "enabled"}),
            "types": {name: _support(name in thinking) for name in THINKING_TYPES},
        },
    }


def model_info(row: dict[str, Any]) -> dict[str, Any]:
    """`anthropic.types.ModelInfo`."""
    lifecycle = row["lifecycle"]
    return {
        "type": "model",
        "id": row["id"],
        "display_name": row["display_name"],
        "created_at": row["created_at"],
        "lifecycle": lifecycle,
        "deprecated_at": row.get("deprecated_at"),
        "retires_at": row.get("retires_at"),
        "line": row.get("line"),
        "max_input_tokens": row["max_input_tokens"],
        "max_tokens": row["max_tokens"],
        "capabilities": capabilities(row),
    }


def page(
    models: list[dict[str, Any]], *, limit: int, after_id: str | None, before_id: str | None
) -> dict[str, Any] | None:
    """One page in the API's list shape, or None when the cursor names no listed model."""
    ids = [m["id"] for m in models]
    if after_id is not None:
        if after_id not in ids:
            return None
        start = ids.index(after_id) + 1
        data, has_more = models[start : start + limit], start + limit < len(models)
    elif before_id is not None:
        if before_id not in ids:
            return None
        end = ids.index(before_id)
        start = max(0, end - limit)
        data, has_more = models[start:end], start > 0
    else:
        data, has_more = models[:limit], limit < len(models)
    return {
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def _lifecycles(request: web.Request) -> set[str] | None:
    """The `lifecycle` filter (SDK sends `lifecycle[]=...`); default active and deprecated."""
    asked = request.query.getall("lifecycle[]", []) + request.query.getall("lifecycle", [])
    wanted = {v for item in asked for v in item.split(",") if v}
    if wanted - set(LIFECYCLES) or len(wanted) > len(LIFECYCLES):
        return None
    return wanted or {"active", "deprecated"}


async def list_models(request: web.Request) -> web.Response:
    request_id = new_request_id()
    refused = gate(request, request.app[STATE].config.api_key, request_id)
    if refused is not None:
        return refused
    query = request.query
    raw_limit = query.get("limit", str(DEFAULT_LIMIT))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
        message = f"limit: Input should be between 1 and {MAX_LIMIT}"
        return error_response(400, message, request_id=request_id)
    if "after_id" in query and "before_id" in query:
        message = "after_id and before_id cannot both be given"
        return error_response(400, message, request_id=request_id)
    lifecycles = _lifecycles(request)
    if lifecycles is None:
        message = f"lifecycle: each value must be one of {', '.join(LIFECYCLES)}"
        return error_response(400, message, request_id=request_id)
    listed = [model_info(r) for r in rows() if r["lifecycle"] in lifecycles]
    body = page(
        listed,
        limit=int(raw_limit),
        after_id=query.get("after_id"),
        before_id=query.get("before_id"),
    )
    if body is None:
        cursor = query.get("after_id") or query.get("before_id")
        return error_response(404, f"model: {cursor}", request_id=request_id)
    return json_response(body, request_id=request_id)


async def get_model(request: web.Request) -> web.Response:
    request_id = new_request_id()
    refused = gate(request, request.app[STATE].config.api_key, request_id)
    if refused is not None:
        return refused
    model_id = request.match_info["model_id"]
    row = row_for(model_id)
    if row is None:
        return error_response(404, f"model: {model_id}", request_id=request_id)
    return json_response(model_info(row), request_id=request_id)


def add_model_routes(app: web.Application) -> None:
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model_id}", get_model)
