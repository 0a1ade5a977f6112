"""`POST /v1/messages`, drop-in: the API's own request becomes a msgq job, and the caller gets
the API's own answer once the job ends (`answer`), or its events as they come
(`stream`). Any official SDK pointed at msgq works unchanged.

The key is a msgq tenant key (`x-api-key` or `Authorization: Bearer`); `anthropic-version`,
`anthropic-beta` and every other `anthropic-*` header travel with the job. msgq's own options
are headers an SDK can add without code changes (`default_headers`, `extra_headers`):
`msgq-priority` (default: the tenant's configured default priority, else `interactive`, since
someone is waiting), `msgq-lane`, and `Idempotency-Key`, which becomes the job ID, so a re-send
is answered by the same job. A W3C `traceparent` header puts the job in the caller's trace.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from msgq.client import Submitted, new_job_id
from msgq.http.deps import AppState, State, Tenant
from msgq.http.dropin.answer import DropinCall, WaitAnswer
from msgq.http.dropin.stream import StreamAnswer
from msgq.http.errors import ApiError
from msgq.http.versions import Headers
from msgq.jobs.ids import scoped_id
from msgq.tenancy.policy import PolicyReader
from schemas import Lane, Priority

router = APIRouter(prefix="/v1/messages", tags=["drop-in"])
E = TypeVar("E", Priority, Lane)


@router.post(
    "",
    summary="Drop-in Messages create: queued as a job, answered as the API answers",
    response_class=Response,
)
async def create_message(
    request: Request, tenant: Tenant, state: State, headers: Headers
) -> Response:
    """200 with the Message as stored (`request-id`: the API's, `msgq-job-id`: the job), or
    the API's error; with `stream: true`, the API's events. See docs/guides/sdk.md."""
    body = await _json_object(request)
    version = headers.required_version(request)
    priority = _enum(Priority, request.headers.get("msgq-priority"), "msgq-priority")
    lane = _enum(Lane, request.headers.get("msgq-lane"), "msgq-lane")
    streaming = body.get("stream") is True
    if streaming and lane is Lane.BATCH:
        raise ApiError(400, "stream: true cannot ride msgq-lane: batch (no events to relay)")
    job_id = request.headers.get("idempotency-key") or new_job_id()
    options: dict[str, Any] = {
        "job_id": job_id,
        "tenant": tenant,
        "lane": lane,
        "priority": priority or await _default_priority(request, state, tenant),
        "anthropic_version": version,
        "betas": headers.betas,
        "workspace_id": headers.workspace_id,
        # Every other anthropic-* header (the SDK's `user_profile_id=` among them) rides along.
        "api_headers": headers.others,
        # A W3C `traceparent` (as OpenTelemetry-instrumented SDK clients send) puts the job in
        # the caller's trace, as on POST /v1/jobs; a malformed one is ignored.
        "traceparent": request.headers.get("traceparent"),
        "tracestate": request.headers.get("tracestate"),
    }
    internal = scoped_id(tenant, job_id)
    # The call holds a connection (and, streamed, a relay) until its job ends: bounded per
    # tenant, so one tenant's thousands of waiting calls cannot take the process from others.
    state.dropin_calls.acquire(tenant)
    stack = AsyncExitStack()
    stack.callback(state.dropin_calls.release, tenant)
    try:
        if not streaming:
            job = await state.client.submit(body, **options)
            return WaitAnswer(_call(state, job, job_id), stack)
        # Subscribed before the job exists: its first event cannot be missed.
        follower = await stack.enter_async_context(
            state.endings.follow(internal, channel=state.settings.keys.relay_channel(internal))
        )
        job = await state.client.submit(body, **options)
    except BaseException:
        await stack.aclose()
        raise
    ping_s = state.settings.dropin_ping_s
    return StreamAnswer(_call(state, job, job_id), stack, follower, ping_s=ping_s)


def _call(state: AppState, job: Submitted, job_id: str) -> DropinCall:
    return DropinCall(state=state, job_id=job.id, public_id=job_id, record=job.record)


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise ApiError(400, "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object (the Messages request)")
    return body


def _enum(kind: type[E], value: str | None, header: str) -> E | None:
    if value is None:
        return None
    try:
        return kind(value.strip().lower())
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise ApiError(400, f"{header}: {value!r} is not one of {allowed}") from None


async def _default_priority(request: Request, state: AppState, tenant: str) -> Priority:
    """The tenant's own default priority when the fleet's tenants file sets one; otherwise
    `interactive`: a drop-in caller is holding a connection open for the answer."""
    reader: PolicyReader | None = getattr(request.app.state, "dropin_policy", None)
    if reader is None:
        reader = PolicyReader(state.redis, state.settings)
        request.app.state.dropin_policy = reader
    config = (await reader.get()).tenants.get(tenant)
    if "default_priority" in config.model_fields_set:
        return config.default_priority
    return Priority.INTERACTIVE
