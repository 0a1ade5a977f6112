"""Dashboard sessions end with their key and at an absolute lifetime: a revoked key (changed
MSGQ_API_KEYS / MSGQ_ADMIN_KEYS, or a line gone from the keys file) ends its sessions within
MSGQ_UI_KEY_RECHECK_S; MSGQ_UI_SESSION_MAX_S ends a session however busy."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from pydantic import SecretStr
from redis.asyncio import Redis

from msgq.http.app import create_app
from msgq.settings import Settings
from tests.conftest import KEY_A, KEY_B, KEYS, eventually
from tests.test_ui import ADMIN_KEY, sign_in


@asynccontextmanager
async def dashboard(
    settings: Settings, cookies: httpx.Cookies | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """One API process (its own app) over https, optionally carrying another's cookies."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="https://msgq.test", cookies=cookies
        ) as http:
            yield http


async def sessions_in(redis: Redis) -> int:
    return len([k async for k in redis.scan_iter(KEYS.prefix + "ui:session:*")])


async def test_a_key_removed_from_the_keys_file_ends_its_session(
    settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    """The key's line is deleted from MSGQ_API_KEYS_FILE: the session still works inside the
    check window (2 s here), then the next page is the sign-in page and the session is gone."""
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"tenant-a:{KEY_A}\ntenant-b:{KEY_B}\n")
    custom = settings.model_copy(update={"api_keys_file": keys_file, "ui_key_recheck_s": 2.0})
    async with dashboard(custom) as ui:
        await sign_in(ui, KEY_A)
        keys_file.write_text(f"tenant-b:{KEY_B}\n")
        revoked_at = time.monotonic()
        assert (await ui.get("/ui")).status_code == 200  # checked just now: cached

        async def signed_out() -> bool:
            return (await ui.get("/ui")).status_code == 303

        await eventually(signed_out, timeout_s=10)
        assert time.monotonic() - revoked_at < 2.0 + 1.0
        assert await sessions_in(redis) == 0
        assert (await ui.get("/ui/jobs")).headers["location"] == "/ui/login"


async def test_a_restart_with_the_key_revoked_ends_its_sessions(
    api_settings: Settings, redis: Redis
) -> None:
    """Sessions are in Redis, so they outlive a restart: one signed in with a tenant key and one
    with an admin key end when the API comes back without those keys (window 0: checked at
    once); a kept key's session lives on, and ends once that key belongs to another tenant."""
    before = api_settings.model_copy(
        update={"admin_keys": SecretStr(ADMIN_KEY), "ui_key_recheck_s": 0}
    )
    cookies: dict[str, httpx.Cookies] = {}
    for name, key in (("tenant", KEY_A), ("admin", ADMIN_KEY), ("kept", KEY_B)):
        async with dashboard(before) as ui:
            await sign_in(ui, key)
            cookies[name] = ui.cookies
    assert await sessions_in(redis) == 3
    after = before.model_copy(
        update={
            "api_keys": SecretStr(f"tenant-b:{KEY_B}"),
            "admin_keys": SecretStr("another-admin-key-0123"),
        }
    )
    for name in ("tenant", "admin"):
        async with dashboard(after, cookies[name]) as ui:
            assert (await ui.get("/ui")).status_code == 303, name
    async with dashboard(after, cookies["kept"]) as ui:
        assert (await ui.get("/ui")).status_code == 200
    rebound = before.model_copy(update={"api_keys": SecretStr(f"tenant-c:{KEY_B}")})
    async with dashboard(rebound, cookies["kept"]) as ui:
        assert (await ui.get("/ui")).status_code == 303  # the key is tenant-c's now, not b's


async def test_a_busy_session_ends_at_its_absolute_lifetime(
    api_settings: Settings, redis: Redis
) -> None:
    """Used every 0.1 s (the idle timeout never lapses), a session with a 1 s lifetime ends
    after 1 s; its Redis TTL never reaches past that end."""
    custom = api_settings.model_copy(update={"ui_session_max_s": 1, "ui_session_idle_s": 3600})
    async with dashboard(custom) as ui:
        await sign_in(ui, KEY_A)
        started = time.monotonic()
        keys = [k async for k in redis.scan_iter(KEYS.prefix + "ui:session:*")]
        assert len(keys) == 1 and 0 < await redis.ttl(keys[0]) <= 1

        async def ended() -> bool:
            return (await ui.get("/ui")).status_code == 303

        await eventually(ended, timeout_s=5)
        assert time.monotonic() - started >= 0.9
