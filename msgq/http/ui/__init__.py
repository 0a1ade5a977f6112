"""The operator dashboard at /ui: server-rendered pages (Jinja2, autoescaped) with the vendored
htmx polling fragments; sign-in with an API key (tenant) or an admin key (every tenant)."""

from fastapi import APIRouter

from msgq.extras import require

require("api", "the msgq dashboard", "jinja2")

from msgq.http.ui import actions, batch_pages, pages  # noqa: E402  # after the extras check

router = APIRouter()
router.include_router(pages.router)
router.include_router(batch_pages.router)
router.include_router(actions.router)

__all__ = ["router"]
