"""Rendering: the Jinja2 environment (autoescape on for every template), formatting filters, and
the security headers every dashboard response carries."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup, escape

from msgq.http.ui.session import CSRF_FIELD, Session

# Scripts and styles only from /ui/static; images also as data: URIs (the job page's
# thumbnails); nothing may frame the dashboard. A payload that escaped the templates' escaping
# still could not run.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
    "x-frame-options": "DENY",
}


def when(value: datetime | None) -> str:
    """UTC, to the second; '-' when unset."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def ago(value: datetime | None) -> str:
    if value is None:
        return "-"
    seconds = int((datetime.now(UTC) - value).total_seconds())
    if seconds < 0:
        return f"in {-seconds}s" if seconds > -120 else f"in {-seconds // 60}m"
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def usd(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def code(value: object) -> Markup:
    """A sentence shared with the CLI, where `msgq worker` is written with backticks: escaped
    first, then each pair shown as <code> (the page printed the backticks)."""
    escaped = str(escape(str(value)))
    return Markup(
        re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    )  # escaped above: only <code> is added


ENV = Environment(
    loader=PackageLoader("msgq.http.ui", "templates"),
    autoescape=True,  # every template, whatever its name: record text is untrusted
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters.update(when=when, ago=ago, usd=usd, number=number, code=code)
ENV.globals.update(csrf_field=CSRF_FIELD)


def html(
    request: Request,
    template: str,
    session: Session | None = None,
    *,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """Render `template` with the session (who, CSRF token) and `context`."""
    body = ENV.get_template(template).render(
        request=request, session=session, path=request.url.path, **context
    )
    return HTMLResponse(body, status_code=status_code, headers=HEADERS)


def message(
    request: Request, session: Session | None, status_code: int, title: str, text: str
) -> HTMLResponse:
    """A page that says what went wrong (404, 403, ...), in the dashboard's frame."""
    return html(request, "message.html", session, status_code=status_code, title=title, text=text)
