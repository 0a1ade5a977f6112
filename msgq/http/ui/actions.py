"""The dashboard's actions (POST only, each with the session's CSRF token): sign in and out,
cancel and retry a job, retry a failure group, resume a paused fleet."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from msgq.http.deps import state_of
from msgq.http.ui import session as sessions
from msgq.http.ui.common import not_found, owned_record, ui_router
from msgq.http.ui.failures import retry_group
from msgq.http.ui.render import html, message
from msgq.http.ui.session import Actor
from msgq.tenancy.scheduling import resume_fleet

router = ui_router()


@router.post("/login")
async def login(request: Request) -> Response:
    """The key comes in the form body only; a wrong one gets the form again, with no hint."""
    form = await sessions.form_of(request)
    if not sessions.login_token_ok(request, form.get("login_token", "")):
        text = "The sign-in form expired. Load it again."
        return message(request, None, 403, "Refused", text)
    key = form.get("api_key", "")
    session = sessions.role_for(request, key)
    if session is None:
        token = form.get("login_token", "")
        return html(request, "login.html", None, status_code=401, login_token=token, failed=True)
    response = RedirectResponse("/ui", status_code=303)
    await sessions.start(request, response, session, key)
    return response


@router.post("/logout")
async def logout(request: Request, _: Actor) -> Response:
    response = RedirectResponse("/ui/login", status_code=303)
    await sessions.end(request, response)
    return response


def _back_to(job_id: str) -> RedirectResponse:
    return RedirectResponse(f"/ui/jobs/{quote(job_id, safe='')}", status_code=303)


@router.post("/jobs/{job_id}/cancel")
async def cancel(request: Request, session: Actor, job_id: str) -> Response:
    if await owned_record(request, session, job_id) is None:
        return not_found(request, session, "job")
    await state_of(request).client.cancel(job_id)
    return _back_to(job_id)


@router.post("/jobs/{job_id}/retry")
async def retry(request: Request, session: Actor, job_id: str) -> Response:
    """Re-run a failed job with its kept request, as `msgq retry` does."""
    if await owned_record(request, session, job_id) is None:
        return not_found(request, session, "job")
    _, why_not = await state_of(request).client.retry_explained(job_id)
    if why_not:
        return message(request, session, 409, "Not retried", f"Not retried: {why_not}.")
    return _back_to(job_id)


def _admins_only(request: Request, session: Actor) -> HTMLResponse | None:
    if session.admin:
        return None
    return message(request, session, 403, "Refused", "This action needs an admin key.")


@router.post("/failures/retry")
async def retry_failures(request: Request, session: Actor) -> Response:
    """Every failed job with this error type and message (admin)."""
    refused = _admins_only(request, session)
    if refused is not None:
        return refused
    group = (await sessions.form_of(request)).get("group", "")
    state = state_of(request)
    requeued, left = await retry_group(
        state.redis, state.settings.keys, state.client, group, tenant=None
    )
    return RedirectResponse(f"/ui/failures?retried={requeued}&left={left}", status_code=303)


@router.post("/resume")
async def resume(request: Request, session: Actor) -> Response:
    """Lift the spend-limit pause (admin), as `msgq resume` does."""
    refused = _admins_only(request, session)
    if refused is not None:
        return refused
    await resume_fleet(state_of(request).redis, state_of(request).settings.keys)
    return RedirectResponse("/ui", status_code=303)
