"""`POST /v1/messages/count_tokens`: the API's own count of a request's input tokens.

It is free and has its own rate limits, separate from message creation, so it never takes
from (or waits on) the fleet's Messages buckets: it is a direct call, answered or refused.
Its counts are estimates too, and prompt caching is not applied to them.
"""

from __future__ import annotations

from typing import Any

import orjson

from msgq.errors import RateLimitError, RejectedError, UnavailableError, UpstreamError
from msgq.extras import require
from msgq.settings import Settings

# The Messages fields count_tokens takes (it has no max_tokens, sampling or stream).
COUNTED_FIELDS = frozenset(
    {
        "model",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "thinking",
        "output_config",
        "output_format",
        "context_management",
        "mcp_servers",
        "cache_control",
    }
)


def count_body(request: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in request.items() if k in COUNTED_FIELDS}


async def count_tokens(
    settings: Settings,
    request: dict[str, Any],
    *,
    anthropic_version: str | None = None,
    betas: list[str] | None = None,
) -> int:
    """The API's `input_tokens` for `request`; an UpstreamError when it refuses or fails."""
    require("worker", "count_tokens", "httpx")
    import httpx  # an optional extra: imported once it is known to be there

    headers = {
        "anthropic-version": anthropic_version or settings.anthropic_version,
        "content-type": "application/json",
    }
    if settings.anthropic_api_key is not None:
        headers["x-api-key"] = settings.anthropic_api_key.get_secret_value()
    names = betas if betas is not None else (settings.anthropic_beta or "").split(",")
    if any(n.strip() for n in names):
        headers["anthropic-beta"] = ",".join(n.strip() for n in names if n.strip())
    url = settings.anthropic_base_url.rstrip("/") + "/v1/messages/count_tokens"
    try:
        async with httpx.AsyncClient(timeout=settings.request_timeout_s) as http:
            response = await http.post(
                url, content=orjson.dumps(count_body(request)), headers=headers
            )
    except httpx.HTTPError as exc:
        msg = f"count_tokens: connection failed ({type(exc).__name__})"
        raise UnavailableError(msg, error_type="connection_error") from None
    if response.status_code != 200:
        raise _refusal(response.status_code, response.content, response.headers)
    return int(orjson.loads(response.content)["input_tokens"])


def _refusal(status: int, content: bytes, headers: Any) -> UpstreamError:
    try:
        message = str(orjson.loads(content)["error"]["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = f"HTTP {status}"
    request_id = headers.get("request-id")
    if status == 429:
        retry = headers.get("retry-after")
        retry_s = float(retry) if retry and retry.replace(".", "", 1).isdigit() else None
        return RateLimitError(
            message, status_code=status, retry_after_s=retry_s, request_id=request_id
        )
    if status >= 500:
        return UnavailableError(message, status_code=status, request_id=request_id)
    return RejectedError(message, status_code=status, request_id=request_id)
