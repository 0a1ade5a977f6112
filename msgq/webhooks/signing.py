"""Standard Webhooks signatures: `webhook-id`, `webhook-timestamp`, `webhook-signature`.

The signature is `v1,` + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")), where the key is
the base64 part of a `whsec_...` secret (standardwebhooks.com; any receiver library verifies it).

A tenant's webhooks are signed with a key of its own, so one tenant cannot make msgq sign a body
another tenant's receiver accepts: the tenant's `webhook_secret` from the tenants file, else one
derived from MSGQ_WEBHOOK_SECRET as `whsec_` + base64(HMAC-SHA256(global key, tenant name)).
Only jobs with no tenant (Python client or raw Redis, no tenant given) use the global key itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

SECRET_PREFIX = "whsec_"
MIN_KEY_BYTES = 16  # the spec suggests 24-64 random bytes; refuse what is plainly too weak


class SecretFormatError(ValueError):
    """A webhook secret that is not `whsec_` + base64 of at least 16 bytes."""


def secret_key(secret: str) -> bytes:
    """The HMAC key inside `whsec_<base64>`; raises SecretFormatError saying what is wrong."""
    if not secret.startswith(SECRET_PREFIX):
        msg = f"must start with {SECRET_PREFIX} (Standard Webhooks: {SECRET_PREFIX} + base64)"
        raise SecretFormatError(msg)
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error:
        msg = f"the part after {SECRET_PREFIX} must be base64"
        raise SecretFormatError(msg) from None
    if len(key) < MIN_KEY_BYTES:
        msg = f"the key must be at least {MIN_KEY_BYTES} bytes (it is {len(key)})"
        raise SecretFormatError(msg)
    return key


def derived_secret(global_secret: str, tenant: str) -> str:
    """The tenant's own `whsec_` secret, derived from the global one (HMAC-SHA256 keyed by the
    global key, over the tenant's name as UTF-8): an admin can hand it to that tenant alone."""
    digest = hmac.new(secret_key(global_secret), tenant.encode(), hashlib.sha256).digest()
    return SECRET_PREFIX + base64.b64encode(digest).decode()


def signature(key: bytes, webhook_id: str, timestamp_s: int, body: bytes) -> str:
    signed = f"{webhook_id}.{timestamp_s}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(key: bytes, webhook_id: str, timestamp_s: int, body: bytes) -> dict[str, str]:
    """The three headers of one delivery attempt (the timestamp is the attempt's, the ID is
    the same on every attempt, so receivers can deduplicate)."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp_s),
        "webhook-signature": signature(key, webhook_id, timestamp_s, body),
    }
