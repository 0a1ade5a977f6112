"""Every HTTP error msgq answers, in the Anthropic API's shape, built from one model and mapped
from domain errors in one place (`register`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from msgq.errors import (
    InvalidJobError,
    JobConflictError,
    JobNotFoundError,
    NotReplicatedError,
)
from schemas.api import ErrorBody, ErrorDetail

# The Anthropic API's error type for each status msgq answers with.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
}
# The Batches-compatible routes answer validation errors as the API does (400), so the official
# SDK raises BadRequestError for msgq as for the API; msgq's own /v1/jobs answers 422.
API_COMPATIBLE_PREFIX = "/v1/messages"


class ApiError(Exception):
    """Answered as `{"type": "error", "error": {"type", "message"}}` with its status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = None,
        errors: list[dict[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type or ERROR_TYPES.get(status, "api_error")
        self.message = message
        self.errors = errors


def error_body(
    error_type: str, message: str, errors: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    detail = ErrorDetail(type=error_type, message=message, errors=errors)
    return ErrorBody(error=detail).model_dump(exclude_none=True)


def error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.error_type, exc.message, exc.errors), exc.status)


def _validation_status(request: Request) -> int:
    return 400 if request.url.path.startswith(API_COMPATIBLE_PREFIX) else 422


def _bare_messages_body(request: Request, errors: list[Any]) -> bool:
    """A Messages body POSTed to /v1/jobs as is: `request` missing, `model` and `messages`
    present (the first mistake of someone who read the Anthropic docs first)."""
    if request.method != "POST" or request.url.path.rstrip("/") != "/v1/jobs":
        return False
    # pydantic reports the missing field with the object it is missing from as `input`.
    missing = [e for e in errors if tuple(e.get("loc", ())) == ("body", "request")]
    body = missing[0].get("input") if missing else None
    return isinstance(body, dict) and {"model", "messages"} <= body.keys()


def _hint(request: Request, errors: list[Any]) -> str:
    if not _bare_messages_body(request, errors):
        return ""
    return (
        "this looks like a bare Messages request: /v1/jobs takes it wrapped, "
        '{"request": {"model": ..., "messages": ...}} (or POST it to /v1/messages); '
    )


def register(app: FastAPI) -> None:
    """The one mapping from what can go wrong to what the client sees."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(InvalidJobError)
    async def invalid_job(request: Request, exc: InvalidJobError) -> JSONResponse:
        return error_response(ApiError(_validation_status(request), str(exc), errors=exc.errors))

    @app.exception_handler(JobNotFoundError)
    async def not_found(_: Request, exc: JobNotFoundError) -> JSONResponse:
        return error_response(ApiError(404, str(exc)))

    @app.exception_handler(JobConflictError)
    async def conflict(_: Request, exc: JobConflictError) -> JSONResponse:
        return error_response(ApiError(409, str(exc)))

    @app.exception_handler(NotReplicatedError)
    async def not_replicated(_: Request, exc: NotReplicatedError) -> JSONResponse:
        # The job may exist: the message says so, and a resubmit with its ID is safe.
        return error_response(ApiError(503, str(exc)))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(ApiError(400, "body is not valid JSON"))
        rows = [
            {
                "loc": ".".join(str(p) for p in e["loc"][1:]) or "body",
                "msg": str(e["msg"]),
                "type": str(e["type"]),
            }
            for e in errors
        ]
        summary = _hint(request, errors) + "; ".join(f"{r['loc']}: {r['msg']}" for r in rows[:3])
        return error_response(ApiError(_validation_status(request), summary, errors=rows))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = (
            f"no route {request.method} {request.url.path}"
            if exc.status_code == 404
            else str(exc.detail)
        )
        return error_response(ApiError(exc.status_code, message))

    @app.exception_handler(RedisError)
    async def redis_down(_: Request, exc: RedisError) -> JSONResponse:
        return error_response(ApiError(503, "the queue is unavailable"))
