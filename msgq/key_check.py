"""Is ANTHROPIC_API_KEY accepted? One `GET /v1/models?limit=1`, which costs nothing.

`msgq worker --check` said `healthy` with `ANTHROPIC_API_KEY=foo`, and every job then failed
with 401; `msgq dev` with such a key left the simulator for an API that refused it. Both ask
the Models API first and say what it answered.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from msgq.settings import Settings

CHECK_TIMEOUT_S = 10.0
REFUSING = (401, 403)  # the key itself is wrong, or not allowed


@dataclass(frozen=True)
class KeyCheck:
    """What the Models API said of the key. `refused`: it is wrong (no key, 401, 403); any
    other problem (unreachable, 429, 5xx) leaves the key unverified, not wrong, so a health
    check does not take a worker down for the API's bad minute."""

    problem: str | None = None
    refused: bool = False


async def check_api_key(settings: Settings) -> KeyCheck:
    """Ask the Models API whether it accepts ANTHROPIC_API_KEY."""
    problem = await api_key_problem(settings)
    if problem is None:
        return KeyCheck()
    refused = settings.anthropic_api_key is None or any(
        f"ANTHROPIC_API_KEY: {status} " in problem for status in REFUSING
    )
    return KeyCheck(problem, refused=refused)


async def api_key_problem(settings: Settings) -> str | None:
    """None when the API at ANTHROPIC_BASE_URL accepts the key; else one line saying what
    failed (no key, the API's status and message, or the connection error)."""
    if settings.anthropic_api_key is None:
        return "ANTHROPIC_API_KEY is not set"
    base = settings.anthropic_base_url.rstrip("/")
    headers = {
        "x-api-key": settings.anthropic_api_key.get_secret_value(),
        "anthropic-version": settings.anthropic_version,
    }
    try:
        async with httpx.AsyncClient(timeout=CHECK_TIMEOUT_S) as http:
            answer = await http.get(f"{base}/v1/models", params={"limit": 1}, headers=headers)
    except httpx.HTTPError as exc:
        return f"cannot reach {base} ({type(exc).__name__}: {exc})"
    if answer.is_success:
        return None
    return f"{base} refused ANTHROPIC_API_KEY: {answer.status_code} {_api_error(answer)}"


def _api_error(answer: httpx.Response) -> str:
    """`type: message` from the API's error shape, else the start of the body."""
    try:
        error = answer.json()["error"]
        return f"{error['type']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return answer.text[:200]
