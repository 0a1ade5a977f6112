"""The API's answers every route shares: the exact error shape, JSON bodies, and the gate each
request passes first (the key, then `anthropic-version`)."""

from __future__ import annotations

import secrets
from typing import Any

import orjson
from aiohttp import web

from msgq.dev.simulator.versions import version_problem

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def new_request_id() -> str:
    return "req_sim" + secrets.token_hex(12)


def error_response(
    status: int,
    message: str,
    *,
    error_type: str | None = None,
    request_id: str,
    headers: dict[str, str] | None = None,
    error_code: str | None = None,
) -> web.Response:
    """The API's exact error shape, with a request-id header."""
    error: dict[str, Any] = {
        "type": error_type or ERROR_TYPES.get(status, "api_error"),
        "message": message,
    }
    if error_code:
        error["details"] = {"error_code": error_code}
    body = {"type": "error", "error": error, "request_id": request_id}
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers={"request-id": request_id, **(headers or {})},
    )


def json_response(data: Any, *, status: int = 200, request_id: str | None = None) -> web.Response:
    headers = {"request-id": request_id} if request_id else {}
    return web.Response(
        status=status, body=orjson.dumps(data), content_type="application/json", headers=headers
    )


def api_key_of(request: web.Request) -> str:
    """`x-api-key`, else `Authorization: Bearer` (what SDK 2.x sends); with both, the API uses
    `x-api-key` (reference §12.1)."""
    key = request.headers.get("x-api-key", "")
    if key:
        return key
    bearer = request.headers.get("authorization", "")
    return bearer[7:].strip() if bearer.lower().startswith("bearer ") else ""


def gate(request: web.Request, accepted_key: str | None, request_id: str) -> web.Response | None:
    """401 for a missing or wrong key, 400 for a missing or unknown version, else None."""
    key = api_key_of(request)
    if not key or (accepted_key is not None and key != accepted_key):
        return error_response(401, "invalid x-api-key", request_id=request_id)
    problem = version_problem(request.headers.get("anthropic-version"))
    if problem is not None:
        return error_response(400, problem, request_id=request_id)
    return None
