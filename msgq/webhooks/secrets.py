"""Which secret signs a webhook: the tenant's own, else one derived for it from the global one.

Used by the worker's dispatcher (signing) and by `msgq webhook-secret` (telling an admin what to
hand each tenant), so the two can never disagree.
"""

from __future__ import annotations

from typing import Literal

from msgq.settings import Settings
from msgq.tenancy.tenants import load_tenants
from msgq.webhooks.signing import derived_secret

Source = Literal["tenants file", "derived from MSGQ_WEBHOOK_SECRET", "MSGQ_WEBHOOK_SECRET"]


class NoWebhookSecretError(ValueError):
    """Neither the tenant nor the fleet has a webhook secret configured."""


def webhook_secret(settings: Settings, tenant: str | None) -> tuple[str, Source]:
    """(`whsec_` secret, where it comes from) for `tenant`'s webhooks (None: an untenanted job).

    A tenant never gets the global secret itself: with it, a receiver set up for one tenant
    would accept a body msgq signed for another tenant's job (cross-tenant forgery)."""
    own = load_tenants(settings.tenants_file).get(tenant).webhook_secret
    if tenant is not None and own is not None:
        return own.get_secret_value(), "tenants file"
    if settings.webhook_secret is None:
        msg = "no webhook secret: set MSGQ_WEBHOOK_SECRET or the tenant's webhook_secret"
        raise NoWebhookSecretError(msg)
    global_secret = settings.webhook_secret.get_secret_value()
    if tenant is None:
        return global_secret, "MSGQ_WEBHOOK_SECRET"
    return derived_secret(global_secret, tenant), "derived from MSGQ_WEBHOOK_SECRET"
