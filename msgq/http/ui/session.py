"""Dashboard sessions: sign-in with an API key, a random session ID in an HttpOnly SameSite=Strict
cookie, the session (tenant or admin, CSRF token) in Redis with a TTL, CSRF checked on every POST.

The key is read once, from the sign-in form's body, and never stored, echoed or put in a URL.
Redis holds the session under the SHA-256 of its ID, so a Redis dump alone cannot replay one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import parse_qsl

import orjson
from fastapi import Depends, Request
from fastapi.responses import Response

from msgq.http.auth import tenant_for
from msgq.http.deps import state_of
from msgq.keys import ui_session_key
from msgq.logs import register_secret
from msgq.settings import Settings

COOKIE = "msgq_ui"
LOGIN_COOKIE = "msgq_ui_login"  # double-submit token for the sign-in form (login CSRF)
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL_S = 8 * 3600  # idle timeout: every request renews it
MIN_KEY_CHARS = 8
FORM_TYPE = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class Session:
    role: Literal["admin", "tenant"]
    tenant: str | None  # None for an admin: every tenant
    csrf: str

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    @property
    def scope(self) -> str | None:
        """The tenant whose data this session may see; None: all of them."""
        return None if self.admin else self.tenant

    @property
    def who(self) -> str:
        return "admin" if self.admin else f"tenant {self.tenant}"


class SignInRequiredError(Exception):
    """No valid session: pages redirect to the sign-in form, fragments answer 401."""


class CsrfError(Exception):
    """A POST without the session's CSRF token: refused with 403."""


def admin_keys(settings: Settings) -> list[str]:
    """MSGQ_ADMIN_KEYS, comma-separated; each is registered so no log line can carry it."""
    if settings.admin_keys is None:
        return []
    keys = [k.strip() for k in settings.admin_keys.get_secret_value().split(",")]
    keys = [k for k in keys if len(k) >= MIN_KEY_CHARS]
    for key in keys:
        register_secret(key)
    return keys


def role_for(request: Request, presented: str) -> Session | None:
    """An admin key first (every key compared in constant time), then a tenant key."""
    state = state_of(request)
    is_admin = False
    for key in admin_keys(state.settings):
        is_admin |= hmac.compare_digest(key.encode(), presented.encode())
    if is_admin:
        return Session("admin", None, secrets.token_urlsafe(32))
    tenant = tenant_for(state.keys, presented)
    if tenant is None:
        return None
    return Session("tenant", tenant, secrets.token_urlsafe(32))


def _hashed(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


async def start(request: Request, response: Response, session: Session) -> None:
    """Store the session and set its cookie (a fresh ID at every sign-in: no fixation)."""
    session_id = secrets.token_urlsafe(32)
    body = orjson.dumps({"role": session.role, "tenant": session.tenant, "csrf": session.csrf})
    await state_of(request).redis.set(ui_session_key(_hashed(session_id)), body, ex=SESSION_TTL_S)
    response.set_cookie(
        COOKIE,
        session_id,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/ui",
    )
    response.delete_cookie(LOGIN_COOKIE, path="/ui")


async def end(request: Request, response: Response) -> None:
    session_id = request.cookies.get(COOKIE)
    if session_id:
        await state_of(request).redis.delete(ui_session_key(_hashed(session_id)))
    response.delete_cookie(COOKIE, path="/ui")


async def current(request: Request) -> Session:
    """The request's session, its TTL renewed; SignInRequiredError when there is none."""
    session_id = request.cookies.get(COOKIE)
    if not session_id:
        raise SignInRequiredError
    key = ui_session_key(_hashed(session_id))
    redis = state_of(request).redis
    raw = await redis.get(key)
    if raw is None:
        raise SignInRequiredError
    await redis.expire(key, SESSION_TTL_S)
    data = orjson.loads(raw)
    return Session(data["role"], data["tenant"], data["csrf"])


async def checked(request: Request) -> Session:
    """`current`, for a POST: the CSRF token must come in the form or the x-csrf-token header."""
    session = await current(request)
    token = request.headers.get(CSRF_HEADER) or (await form_of(request)).get(CSRF_FIELD)
    if not token or not hmac.compare_digest(token.encode(), session.csrf.encode()):
        raise CsrfError
    return session


async def form_of(request: Request) -> dict[str, str]:
    """An urlencoded form body (the dashboard's forms post nothing else), last value wins."""
    if not request.headers.get("content-type", "").startswith(FORM_TYPE):
        return {}
    return dict(parse_qsl((await request.body()).decode("utf-8", "replace")))


def set_login_token(request: Request, response: Response, token: str) -> None:
    """The sign-in form's token, also set as a SameSite=Strict cookie (double submit)."""
    response.set_cookie(
        LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=_secure(request), path="/ui"
    )


def login_token_ok(request: Request, presented: str) -> bool:
    expected = request.cookies.get(LOGIN_COOKIE, "")
    return bool(expected) and hmac.compare_digest(expected.encode(), presented.encode())


Viewer = Annotated[Session, Depends(current)]
Actor = Annotated[Session, Depends(checked)]
