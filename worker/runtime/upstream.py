"""The one HTTP call to `POST /v1/messages`, and the only place that maps HTTP to meaning."""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from pydantic import ValidationError

from schemas import Message
from worker.errors import (
    InvalidResponseError,
    OverloadedError,
    RateLimitError,
    RejectedError,
    SpendLimitError,
    TransientError,
    UnavailableError,
    UpstreamError,
)
from worker.settings import Settings

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
SPEND_LIMIT_CODE = "enforced_spend_limit_reached"
SPEND_LIMIT_PHRASE = "reached your specified"


@dataclass(frozen=True)
class UpstreamReply:
    """A successful call: the Message exactly as sent, plus what the headers told us."""

    message: dict[str, Any]
    request_id: str | None
    headers: dict[str, str]
    latency_ms: float


def build_client(settings: Settings) -> httpx.AsyncClient:
    """One pooled client per worker process, created at start-up and closed at shutdown."""
    headers = {"anthropic-version": settings.anthropic_version, "content-type": "application/json"}
    if settings.anthropic_api_key is not None:
        headers["x-api-key"] = settings.anthropic_api_key.get_secret_value()
    if settings.anthropic_beta:
        headers["anthropic-beta"] = settings.anthropic_beta
    return httpx.AsyncClient(
        base_url=settings.anthropic_base_url,
        headers=headers,
        timeout=httpx.Timeout(settings.request_timeout_s, connect=settings.connect_timeout_s),
        limits=httpx.Limits(max_connections=settings.max_jobs * 2, max_keepalive_connections=100),
    )


async def send_message(client: httpx.AsyncClient, body: dict[str, Any]) -> UpstreamReply:
    """Call the API once. Raises an UpstreamError subclass for every failure."""
    started = time.perf_counter()
    try:
        response = await client.post("/v1/messages", content=orjson.dumps(body))
    except httpx.TimeoutException as exc:
        msg = f"request timed out ({type(exc).__name__})"
        raise UnavailableError(msg, error_type="timeout") from None
    except httpx.TransportError as exc:
        msg = f"connection failed ({type(exc).__name__})"
        raise UnavailableError(msg, error_type="connection_error") from None
    latency_ms = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise classify(response)
    return UpstreamReply(
        message=parse_message(response),
        request_id=response.headers.get("request-id"),
        headers=dict(response.headers),
        latency_ms=latency_ms,
    )


def parse_message(response: httpx.Response) -> dict[str, Any]:
    """A 200 must carry a Message; anything else is a final `invalid_response`."""
    request_id = response.headers.get("request-id")
    try:
        body = orjson.loads(response.content)
        Message.model_validate(body)
    except (orjson.JSONDecodeError, ValidationError) as exc:
        kind = "not JSON" if isinstance(exc, orjson.JSONDecodeError) else "not a Message"
        msg = f"the API answered 200 with a body that is {kind}"
        raise InvalidResponseError(msg, status_code=200, request_id=request_id) from None
    return dict(body)


def classify(response: httpx.Response) -> UpstreamError:
    """Map a non-200 answer to an error, in the SDK's order: x-should-retry first, then status."""
    status = response.status_code
    error = _error_body(response)
    kwargs: dict[str, Any] = {
        "status_code": status,
        "retry_after_s": parse_retry_after(response.headers),
        "request_id": response.headers.get("request-id") or error.get("request_id"),
        "error_type": error.get("type"),
        "headers": dict(response.headers),
    }
    message = str(error.get("message") or f"HTTP {status}")
    if _is_spend_limit(status, error):
        return SpendLimitError(message, **{**kwargs, "error_type": None})
    should_retry = response.headers.get("x-should-retry", "").lower()
    if should_retry == "false":
        return RejectedError(message, **kwargs)
    if should_retry == "true" or status in RETRYABLE_STATUS or status > 500:
        cls: type[TransientError] = {429: RateLimitError, 529: OverloadedError}.get(
            status, UnavailableError
        )
        return cls(message, **kwargs)
    return RejectedError(message, **kwargs)


def _error_body(response: httpx.Response) -> dict[str, Any]:
    """The API's `{"type":"error","error":{...},"request_id":...}`; {} when not JSON (413s)."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return {}
    return {**body["error"], "request_id": body.get("request_id")}


def _is_spend_limit(status: int, error: dict[str, Any]) -> bool:
    details = error.get("details")
    code = details.get("error_code") if isinstance(details, dict) else None
    if status == 429 and code == SPEND_LIMIT_CODE:
        return True
    return status == 400 and SPEND_LIMIT_PHRASE in str(error.get("message", "")).lower()


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """`retry-after-ms` beats `retry-after` (seconds, or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
