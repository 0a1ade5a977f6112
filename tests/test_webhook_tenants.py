"""Webhook keys per tenant: a tenant's webhooks are signed with its own key (its webhook_secret,
else one derived from MSGQ_WEBHOOK_SECRET) and the body names the tenant, so one tenant cannot
make msgq sign a body another tenant's receiver accepts.

Verified with the `standardwebhooks` library, as a receiver would.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from standardwebhooks import Webhook, WebhookVerificationError

from msgq.settings import Settings
from msgq.webhooks.signing import derived_secret
from tests.conftest import SAMPLES, Sim, StartWorker, eventually
from tests.test_cli import msgq
from tests.test_crash import BODY
from tests.test_webhooks import SECRET, TENANT_SECRET, Receiver, receiver, settings

__all__ = ["receiver", "settings"]  # fixtures shared with test_webhooks

ACME_KEY, MALLORY_KEY = "key-acme-0123456789", "key-mallory-0123456789"


@pytest.fixture
async def tenants_api(settings: Settings) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """The API in-process with two tenants, acme and mallory: one HTTP client each."""
    from msgq.http.app import create_app

    keys = SecretStr(f"acme:{ACME_KEY},mallory:{MALLORY_KEY}")
    app = create_app(settings.model_copy(update={"api_keys": keys}))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=transport,
            base_url="http://t",
            headers={"x-api-key": ACME_KEY, "anthropic-version": "2023-06-01"},
        ) as acme,
        httpx.AsyncClient(
            transport=transport,
            base_url="http://t",
            headers={"x-api-key": MALLORY_KEY, "anthropic-version": "2023-06-01"},
        ) as mallory,
    ):
        yield {"acme": acme, "mallory": mallory}


def cli_secret(settings: Settings, tenant: str, **env: str) -> str:
    done = msgq(settings, "webhook-secret", tenant, env={"MSGQ_WEBHOOK_SECRET": SECRET, **env})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def verify(secret: str, received: Any) -> dict[str, Any]:
    payload: dict[str, Any] = Webhook(secret).verify(received.body, received.headers)
    return payload


async def test_a_tenant_cannot_forge_another_tenants_webhook(
    settings: Settings,
    tenants_api: dict[str, httpx.AsyncClient],
    receiver: Receiver,
    sim: Sim,
    start_worker: StartWorker,
) -> None:
    """Mallory points a job at acme's receiver: with acme's key (as `msgq webhook-secret acme`
    prints it) acme's own webhook verifies and names acme, mallory's fails verification; and
    neither verifies with the global secret."""
    await start_worker()
    hook = f"{receiver.url}/acme-hooks"
    for tenant in ("acme", "mallory"):
        answer = await tenants_api[tenant].post(
            "/v1/jobs", json={"request": BODY, "id": "order-1", "callback_url": hook}
        )
        assert answer.status_code == 202

    async def both_arrived() -> bool:
        return receiver.count() >= 2

    await eventually(both_arrived)
    acme_secret = await asyncio.to_thread(cli_secret, settings, "acme")
    assert acme_secret == derived_secret(SECRET, "acme") != SECRET
    accepted = []
    for received in receiver.requests:
        with pytest.raises(WebhookVerificationError):
            verify(SECRET, received)
        try:
            accepted.append(verify(acme_secret, received))
        except WebhookVerificationError:
            forged = verify(derived_secret(SECRET, "mallory"), received)
            assert forged["tenant"] == "mallory"
    assert [body["tenant"] for body in accepted] == ["acme"]
    assert accepted[0]["id"] == "order-1"


def test_derived_secrets_are_standard_and_distinct() -> None:
    """Each tenant's derived secret is a `whsec_` + base64 key of 32 bytes, usable by a
    Standard Webhooks receiver, stable, and different for every tenant and global secret."""
    other = "whsec_" + base64.b64encode(b"another-global-webhook-key-98765").decode()
    acme = derived_secret(SECRET, "acme")
    assert acme.startswith("whsec_") and len(base64.b64decode(acme[6:])) == 32
    assert acme == derived_secret(SECRET, "acme")
    assert len({acme, derived_secret(SECRET, "acme2"), derived_secret(other, "acme")}) == 3
    Webhook(acme)  # the receiver library takes it as it is


def test_webhook_secret_cli_prints_the_key_in_effect(settings: Settings, tmp_path: Path) -> None:
    """`msgq webhook-secret T`: a tenant's own webhook_secret when it has one, else the derived
    key (source on stderr); with no secret anywhere, exit 2; the configuration page says how
    keys derive (`msgq settings` too, on a terminal) and no secret is ever printed."""
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(f'[tenants.acme]\nwebhook_secret = "{TENANT_SECRET}"\n')
    assert cli_secret(settings, "acme", MSGQ_TENANTS_FILE=str(tenants)) == TENANT_SECRET
    derived = msgq(settings, "webhook-secret", "bob", env={"MSGQ_WEBHOOK_SECRET": SECRET})
    assert derived.stdout.strip() == derived_secret(SECRET, "bob")
    assert "derived from MSGQ_WEBHOOK_SECRET" in derived.stderr
    missing = msgq(settings, "webhook-secret", "bob")
    assert missing.returncode == 2 and "MSGQ_WEBHOOK_SECRET" in missing.stderr
    shown = msgq(settings, "settings")  # piped: the note on keys is for a terminal only
    assert SECRET not in shown.stdout and SECRET not in shown.stderr
    guide = (SAMPLES.parent / "docs" / "reference" / "configuration.md").read_text()
    assert "HMAC-SHA256(`MSGQ_WEBHOOK_SECRET`'s key, tenant name)" in guide
