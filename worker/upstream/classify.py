"""What an answer means: every HTTP status, error body and mid-stream `error` event mapped to
the error tree, here and nowhere else (the SDK's order: x-should-retry first, then status)."""

from __future__ import annotations

import email.utils
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


def invalid_response(response: httpx.Response, what: str) -> InvalidResponseError:
    msg = f"the API answered 200 with {what}"
    return InvalidResponseError(msg, status_code=200, request_id=response.headers.get("request-id"))


def classify_error_event(response: httpx.Response, error: dict[str, Any]) -> UpstreamError:
    """An `error` event after a 200 is classified exactly as its HTTP status would be."""
    status = ERROR_STATUS.get(str(error.get("type")), 500)
    kept = {
        k: v
        for k, v in response.headers.items()
        if k in ("request-id", "retry-after", "retry-after-ms") or k.startswith(RATELIMIT_PREFIX)
    }
    body = orjson.dumps({"type": "error", "error": error})
    return classify(httpx.Response(status, headers=kept, content=body))


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
