"""Dashboard sessions: sign-in with an API key, a random session ID in an HttpOnly SameSite=Strict
cookie, the session (tenant or admin, CSRF token) in Redis with a TTL, CSRF checked on every POST.

The key is read once, from the sign-in form's body, and never stored, echoed or put in a URL.
Redis holds the session under the SHA-256 of its ID, so a Redis dump alone cannot replay one.

A session lives no longer than its key: it keeps HMAC(session ID, key), and a request re-reads
the configured keys (MSGQ_API_KEYS, the keys file, MSGQ_ADMIN_KEYS) to find that key still there
with the same role, at most `MSGQ_UI_KEY_RECHECK_S` after the last check. The fingerprint is keyed
by the session ID, which Redis never holds, so it gives a Redis reader nothing to guess keys
against. A session also ends `MSGQ_UI_SESSION_MAX_S` after sign-in, however busy.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Annotated, Literal
from urllib.parse import parse_qsl

import orjson
from fastapi import Depends, Request
from fastapi.responses import Response
from structlog import get_logger

from msgq.http.auth import KeyConfigError, load_keys, tenant_for
from msgq.http.deps import state_of
from msgq.logs import register_secret
from msgq.settings import Settings

COOKIE = "msgq_ui"
LOGIN_COOKIE = "msgq_ui_login"  # double-submit token for the sign-in form (login CSRF)
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
MIN_KEY_CHARS = 8
FORM_TYPE = "application/x-www-form-urlencoded"
CHECKS_KEPT = 10_000  # sessions whose key check is remembered; past it, expired ones are dropped

log = get_logger("msgq.ui")


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


def _fingerprint(session_id: str, key: str) -> str:
    return hmac.new(session_id.encode(), key.encode(), hashlib.sha256).hexdigest()


@dataclass
class KeyChecks:
    """When each session's key was last found still configured (monotonic deadlines), per app."""

    until: dict[str, float] = field(default_factory=dict)

    def fresh(self, session_hash: str) -> bool:
        return self.until.get(session_hash, 0.0) > time.monotonic()

    def remember(self, session_hash: str, for_s: float) -> None:
        now = time.monotonic()
        if len(self.until) >= CHECKS_KEPT:
            self.until = {h: t for h, t in self.until.items() if t > now}
        self.until[session_hash] = now + for_s


def _checks(request: Request) -> KeyChecks:
    state = request.app.state
    if not hasattr(state, "ui_key_checks"):
        state.ui_key_checks = KeyChecks()
    checks: KeyChecks = state.ui_key_checks
    return checks


def _key_still_valid(settings: Settings, session_id: str, data: dict[str, object]) -> bool:
    """Is the key this session signed in with still configured, for the same role and tenant?
    Re-reads the configuration (the keys file too); an unreadable one fails closed."""
    try:
        if data["role"] == "admin":
            candidates = admin_keys(settings)
        else:
            candidates = [k for k, t in load_keys(settings).items() if t == data["tenant"]]
    except KeyConfigError as exc:
        log.warning("ui.keys_unreadable", error=str(exc))
        return False
    stored = str(data.get("key", ""))
    found = False
    for key in candidates:  # every one compared in constant time
        found |= hmac.compare_digest(_fingerprint(session_id, key), stored)
    return found


async def start(request: Request, response: Response, session: Session, key: str) -> None:
    """Store the session and set its cookie (a fresh ID at every sign-in: no fixation)."""
    session_id = secrets.token_urlsafe(32)
    settings = state_of(request).settings
    body = orjson.dumps(
        {
            "role": session.role,
            "tenant": session.tenant,
            "csrf": session.csrf,
            "key": _fingerprint(session_id, key),
            "created_s": time.time(),
        }
    )
    ttl_s = min(settings.ui_session_idle_s, settings.ui_session_max_s)
    await state_of(request).redis.set(
        state_of(request).settings.keys.ui_session_key(_hashed(session_id)), body, ex=ttl_s
    )
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
        await state_of(request).redis.delete(
            state_of(request).settings.keys.ui_session_key(_hashed(session_id))
        )
    response.delete_cookie(COOKIE, path="/ui")


async def current(request: Request) -> Session:
    """The request's session, its idle TTL renewed (never past its absolute end), its key
    re-checked; SignInRequiredError when there is none, it is too old, or its key is gone."""
    session_id = request.cookies.get(COOKIE)
    if not session_id:
        raise SignInRequiredError
    session_hash = _hashed(session_id)
    key = state_of(request).settings.keys.ui_session_key(session_hash)
    state = state_of(request)
    raw = await state.redis.get(key)
    if raw is None:
        raise SignInRequiredError
    data = orjson.loads(raw)
    # Sessions from before the key check carry no fingerprint: they cannot be checked, so end.
    left_s = state.settings.ui_session_max_s - (time.time() - float(data.get("created_s", 0)))
    checks = _checks(request)
    if left_s <= 0 or not (
        checks.fresh(session_hash) or _key_still_valid(state.settings, session_id, data)
    ):
        await state.redis.delete(key)
        raise SignInRequiredError
    if not checks.fresh(session_hash):
        checks.remember(session_hash, state.settings.ui_key_recheck_s)
    await state.redis.expire(key, max(1, math.ceil(min(state.settings.ui_session_idle_s, left_s))))
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
