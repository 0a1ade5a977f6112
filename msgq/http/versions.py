"""The API's request headers a job carries: `anthropic-version`, `anthropic-beta` (repeatable,
comma-separated, merged), `anthropic-workspace-id`, and every other `anthropic-*` header as sent
(`anthropic-user-profile-id` and whatever the API adds next), read as the official SDKs send
them. The caller's credentials (`x-api-key`, `authorization`) are msgq's and never carried."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from msgq.http.deps import state_of
from msgq.http.errors import ApiError
from schemas.jobs import CARRIED_APART
from schemas.versions import version_problem


@dataclass(frozen=True)
class ApiHeaders:
    """What the request's headers say the job was written for (None: not sent)."""

    anthropic_version: str | None
    betas: list[str] | None
    workspace_id: str | None
    others: dict[str, str] | None = None  # every other anthropic-* header (names lower case)

    def required_version(
        self, request: Request, named: str | None = None, *, fallback: str | None = None
    ) -> str:
        """The job's version: `named` (a JSON field), the header, the configured default for
        older clients, then `fallback` (msgq's own `/v1/jobs` passes the fleet's default;
        the drop-in and Batches routes pass none and keep the API's rule); a 400 in the
        API's shape when there is none or msgq does not know it (its rules could not be
        checked)."""
        version = named or self.anthropic_version
        version = version or state_of(request).settings.http_anthropic_version_default
        version = version or fallback
        problem = version_problem(version)
        if problem is not None or version is None:
            raise ApiError(400, problem or "anthropic-version: header is required")
        return version


def read_api_headers(request: Request) -> ApiHeaders:
    # The header may repeat (the Files API allows it) and each may list several, comma-separated.
    names = [
        name.strip()
        for value in request.headers.getlist("anthropic-beta")
        for name in value.split(",")
        if name.strip()
    ]
    return ApiHeaders(
        anthropic_version=request.headers.get("anthropic-version") or None,
        betas=list(dict.fromkeys(names)) or None,
        workspace_id=request.headers.get("anthropic-workspace-id") or None,
        others=_other_api_headers(request),
    )


def _other_api_headers(request: Request) -> dict[str, str] | None:
    """`anthropic-*` headers besides the three above; a repeated one is joined by commas (as
    HTTP allows). The job's own validation refuses a malformed name or value (a 422/400)."""
    found: dict[str, list[str]] = {}
    for name, value in request.headers.items():  # names arrive lower case
        if name.startswith("anthropic-") and name not in CARRIED_APART:
            found.setdefault(name, []).append(value)
    return {name: ", ".join(values) for name, values in found.items()} or None


async def _api_headers(request: Request) -> ApiHeaders:
    return read_api_headers(request)  # a coroutine: FastAPI runs a plain function in a thread


Headers = Annotated[ApiHeaders, Depends(_api_headers)]
