"""What an answer means: every HTTP status, error body and mid-stream `error` event mapped to
the error tree, here and nowhere else (the SDK's order: x-should-retry first, then status).

It reads plain values (a status, lower-cased headers, the body's bytes), whatever client
received them: the Messages call's aiohttp answer, or (`classify_response`) an httpx one from the
Batches and Models APIs."""

from __future__ import annotations

import email.utils
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from pydantic import ValidationError

from msgq.errors import (
    InvalidResponseError,
    OverloadedError,
    RateLimitError,
    RejectedError,
    SpendLimitError,
    TransientError,
    UnavailableError,
    UpstreamError,
)
from schemas import Message

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
# The status each `error` type is sent with, for errors that arrive as events mid-stream.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
RATELIMIT_PREFIX = "anthropic-ratelimit-"
SPEND_LIMIT_CODE = "enforced_spend_limit_reached"
SPEND_LIMIT_PHRASE = "reached your specified"


Headers = Mapping[str, str]  # lower-cased names (`header_dict`)


def header_dict(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers as a dict with lower-cased names, a repeated one joined with ", " (as httpx
    reads them)."""
    out: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def invalid_response(headers: Headers, what: str) -> InvalidResponseError:
    msg = f"the API answered 200 with {what}"
    return InvalidResponseError(msg, status_code=200, request_id=headers.get("request-id"))


def classify_error_event(headers: Headers, error: dict[str, Any]) -> UpstreamError:
    """An `error` event after a 200 is classified exactly as its HTTP status would be."""
    status = ERROR_STATUS.get(str(error.get("type")), 500)
    kept = {
        k: v
        for k, v in headers.items()
        if k in ("request-id", "retry-after", "retry-after-ms") or k.startswith(RATELIMIT_PREFIX)
    }
    return classify(status, kept, orjson.dumps({"type": "error", "error": error}))


def parse_message(body: bytes, headers: Headers) -> dict[str, Any]:
    """A 200 must carry a Message; anything else is a final `invalid_response`."""
    request_id = headers.get("request-id")
    try:
        message = orjson.loads(body)
        Message.model_validate(message)
    except (orjson.JSONDecodeError, ValidationError) as exc:
        kind = "not JSON" if isinstance(exc, orjson.JSONDecodeError) else "not a Message"
        msg = f"the API answered 200 with a body that is {kind}"
        raise InvalidResponseError(msg, status_code=200, request_id=request_id) from None
    return dict(message)


def classify_response(response: httpx.Response) -> UpstreamError:
    """`classify` for an httpx answer (the Batches and Models APIs)."""
    return classify(response.status_code, response.headers, response.content)


def classify(status: int, headers: Headers, body: bytes) -> UpstreamError:
    """Map a non-200 answer to an error, in the SDK's order: x-should-retry first, then status.
    `headers`: looked up by lower-cased name (a dict from `header_dict`, or httpx's)."""
    error = _error_body(body)
    kwargs: dict[str, Any] = {
        "status_code": status,
        "retry_after_s": parse_retry_after(headers),
        "request_id": headers.get("request-id") or error.get("request_id"),
        "error_type": error.get("type"),
        "headers": dict(headers),
    }
    message = str(error.get("message") or f"HTTP {status}")
    if _is_spend_limit(status, error):
        return SpendLimitError(message, **{**kwargs, "error_type": None})
    should_retry = headers.get("x-should-retry", "").lower()
    if should_retry == "false":
        return RejectedError(message, **kwargs)
    if should_retry == "true" or status in RETRYABLE_STATUS or status > 500:
        cls: type[TransientError] = {429: RateLimitError, 529: OverloadedError}.get(
            status, UnavailableError
        )
        return cls(message, **kwargs)
    return RejectedError(message, **kwargs)


def _error_body(body: bytes) -> dict[str, Any]:
    """The API's `{"type":"error","error":{...},"request_id":...}`; {} when not JSON (413s)."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(parsed, dict) or not isinstance(parsed.get("error"), dict):
        return {}
    return {**parsed["error"], "request_id": parsed.get("request_id")}


def _is_spend_limit(status: int, error: dict[str, Any]) -> bool:
    details = error.get("details")
    code = details.get("error_code") if isinstance(details, dict) else None
    if status == 429 and code == SPEND_LIMIT_CODE:
        return True
    return status == 400 and SPEND_LIMIT_PHRASE in str(error.get("message", "")).lower()


def parse_retry_after(headers: Headers) -> float | None:
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
