"""What the dashboard's routes share: the router (its route class turns a missing session into the
sign-in page and a missing CSRF token into 403), record ownership, and display helpers."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute

from msgq.http.deps import state_of
from msgq.http.ui.render import message
from msgq.http.ui.session import CsrfError, Session, SignInRequiredError
from msgq.jobs.ids import public_id
from schemas import JobRecord

LOGIN_PATH = "/ui/login"


class UiRoute(APIRoute):
    """Pages answer HTML, never the API's JSON errors, for the two ways a request is refused."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequiredError:
                if request.headers.get("hx-request"):  # a fragment: htmx follows this header
                    return Response(status_code=401, headers={"hx-redirect": LOGIN_PATH})
                return RedirectResponse(LOGIN_PATH, status_code=303)
            except CsrfError:
                text = "This action needs the form's CSRF token. Reload the page and try again."
                return message(request, None, 403, "Refused", text)

        return guarded


def ui_router() -> APIRouter:
    return APIRouter(prefix="/ui", route_class=UiRoute, include_in_schema=False)


def may_see(session: Session, record: JobRecord | None) -> JobRecord | None:
    """Another tenant's job is treated exactly as one that does not exist."""
    if record is None or (session.scope is not None and record.tenant != session.scope):
        return None
    return record


async def owned_record(request: Request, session: Session, job_id: str) -> JobRecord | None:
    return may_see(session, await state_of(request).store.get(job_id))


def display_id(record: JobRecord) -> str:
    return public_id(record)


def tenants_in_scope(request: Request, session: Session) -> list[str]:
    """The tenants this session may see: its own, or every tenant with an API key."""
    if session.scope is not None:
        return [session.scope]
    return sorted(set(state_of(request).keys.values()))


def not_found(request: Request, session: Session, what: str) -> Response:
    return message(request, session, 404, "Not found", f"No {what} here (or not yours to see).")


def query_of(**params: Any) -> str:
    """A query string of the non-empty params, for links that keep the filters."""
    return urlencode({k: v for k, v in params.items() if v not in (None, "")})
