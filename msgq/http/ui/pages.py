"""The dashboard's pages and the fragments they poll: overview, jobs, job, failures, static."""

from __future__ import annotations

import secrets
from importlib import resources
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from msgq import waits
from msgq.batches import BatchMeta
from msgq.http.deps import state_of
from msgq.http.ui import job_view, overview
from msgq.http.ui.common import display_id, not_found, owned_record, query_of, ui_router
from msgq.http.ui.failures import failure_groups
from msgq.http.ui.queries import JobFilter, find_jobs
from msgq.http.ui.render import html, message
from msgq.http.ui.session import Viewer, set_login_token
from msgq.http.ui.spend import spend_today
from msgq.jobs.retry_policy import retry_verdict
from schemas import JobStatus

router = ui_router()
STATIC = {"htmx.min.js": "text/javascript", "ui.css": "text/css", "favicon.ico": "image/x-icon"}


@router.get("/static/{name}")
async def static(name: str) -> Response:
    """The vendored htmx and the stylesheet: a fixed list, so no path reaches the filesystem."""
    if name not in STATIC:
        return Response("not found", status_code=404)
    body = resources.files("msgq.http.ui").joinpath("static", name).read_bytes()
    headers = {"cache-control": "public, max-age=3600", "x-content-type-options": "nosniff"}
    return Response(body, media_type=STATIC[name], headers=headers)


@router.get("/login")
async def login_form(request: Request) -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = html(request, "login.html", None, login_token=token, failed=False)
    set_login_token(request, response, token)
    return response


async def _overview(request: Request, session: Viewer) -> dict[str, Any]:
    state = state_of(request)
    keys = state.settings.keys
    series = await overview.last_hour_series(state.redis, keys, session.scope)
    active = await overview.active_jobs(state.redis, keys, session.scope)
    fleet = await waits.fleet_state(state.redis, state.settings)
    return {
        "active": active,
        "fleet": fleet,
        "waits": await waits.count_reasons(state.redis, keys, fleet, active.waiting),
        "chart": overview.chart(series),
        "headroom": await overview.headroom(state.redis, state.settings),
        "pause": await overview.pause_state(state.redis, keys),
        "spend": await spend_today(request, session),
    }


@router.get("")
async def overview_page(request: Request, session: Viewer) -> HTMLResponse:
    return html(request, "overview.html", session, **await _overview(request, session))


@router.get("/part/overview")
async def overview_part(request: Request, session: Viewer) -> HTMLResponse:
    return html(request, "_overview.html", session, **await _overview(request, session))


async def _jobs(request: Request, session: Viewer) -> dict[str, Any] | str:
    """The filters from the query string, and one page of jobs; a string says what is wrong."""
    q = request.query_params
    status = q.get("status") or None
    if status is not None and status not in JobStatus.__members__.values():
        return f"unknown status {status!r}"
    batch = q.get("batch") or None
    batch_tenant = session.scope
    if batch and batch_tenant is None:
        raw = await state_of(request).redis.get(state_of(request).settings.keys.batch_key(batch))
        batch_tenant = batch_owner(raw)
    flt = JobFilter(
        status=JobStatus(status) if status else None,
        tenant=session.scope or q.get("tenant") or None,
        model=q.get("model") or None,
        error_type=q.get("error_type") or None,
        batch=batch,
        batch_tenant=batch_tenant,
    )
    cursor = q.get("cursor", "")[:300]  # a position or `score:job id` (ui.queries.Walk)
    page = await find_jobs(
        state_of(request).redis, state_of(request).settings.keys, flt, cursor=cursor
    )
    filters = {
        "status": status or "",
        "tenant": "" if session.scope else q.get("tenant", ""),
        "model": flt.model or "",
        "error_type": flt.error_type or "",
        "batch": batch or "",
    }
    return {
        "page": page,
        "filters": filters,
        "cursor": cursor,
        "query": query_of(**filters),
        "next_query": query_of(**filters, cursor=page.next_cursor),
        "statuses": [s.value for s in JobStatus],
        "display_id": display_id,
    }


def batch_owner(raw: bytes | None) -> str | None:
    return None if raw is None else BatchMeta.model_validate_json(raw).tenant


@router.get("/jobs")
async def jobs_page(request: Request, session: Viewer) -> HTMLResponse:
    found = await _jobs(request, session)
    if isinstance(found, str):
        return message(request, session, 400, "Bad filter", found)
    return html(request, "jobs.html", session, **found)


@router.get("/part/jobs")
async def jobs_part(request: Request, session: Viewer) -> HTMLResponse:
    found = await _jobs(request, session)
    if isinstance(found, str):
        return message(request, session, 400, "Bad filter", found)
    return html(request, "_jobs.html", session, **found)


@router.get("/jobs/{job_id}")
async def job_page(request: Request, session: Viewer, job_id: str) -> Response:
    record = await owned_record(request, session, job_id)
    if record is None:
        return not_found(request, session, "job")
    state = state_of(request)
    stored = await job_view.stored_request(state.redis, state.settings.keys, record.id)
    return html(
        request,
        "job.html",
        session,
        record=record,
        shown_id=display_id(record),
        request_summary=job_view.summarize(*stored) if stored else None,
        result=job_view.result_blocks(record),
        timeline=job_view.timeline(record),
        waiting=await waits.job_reason(state.redis, state.settings, record),
        metadata=_pretty(record.metadata),
        retry=retry_verdict(record),
        trace_url=job_view.trace_url(state.settings, record),
    )


@router.get("/part/job/{job_id}")
async def job_part(request: Request, session: Viewer, job_id: str) -> Response:
    """The job's status and timeline; once it has ended, htmx reloads the whole page (result,
    usage) and so stops polling."""
    record = await owned_record(request, session, job_id)
    if record is None:
        return not_found(request, session, "job")
    state = state_of(request)
    waiting = await waits.job_reason(state.redis, state.settings, record)
    timeline = job_view.timeline(record)
    response = html(
        request, "_job_live.html", session, record=record, timeline=timeline, waiting=waiting
    )
    if record.status.terminal:
        response.headers["hx-refresh"] = "true"
    return response


def _pretty(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


@router.get("/failures")
async def failures_page(request: Request, session: Viewer) -> HTMLResponse:
    found = await failure_groups(
        state_of(request).redis, state_of(request).settings.keys, tenant=session.scope
    )
    q = request.query_params
    return html(
        request,
        "failures.html",
        session,
        failures=found,
        retried=q.get("retried"),
        left=q.get("left"),
    )


@router.get("/")
async def slash(_: Request) -> RedirectResponse:
    return RedirectResponse("/ui", status_code=307)
