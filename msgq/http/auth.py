"""API keys → tenants, from MSGQ_API_KEYS or MSGQ_API_KEYS_FILE; constant-time comparison."""

from __future__ import annotations

import hmac
import re

from msgq.settings import Settings

TENANT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class KeyConfigError(ValueError):
    """The key configuration is unusable; the message never contains a key."""


def load_keys(settings: Settings) -> dict[str, str]:
    """Map each API key to its tenant. Lines are `tenant:key`; blank lines and # comments skip."""
    lines: list[str] = []
    if settings.api_keys is not None:
        lines += settings.api_keys.get_secret_value().split(",")
    if settings.api_keys_file is not None:
        try:
            lines += settings.api_keys_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            msg = f"cannot read MSGQ_API_KEYS_FILE: {exc.strerror}"
            raise KeyConfigError(msg) from None
    keys: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tenant, sep, key = line.partition(":")
        if not sep or not TENANT.match(tenant) or len(key) < 8:
            msg = f"API key entry {number} must be tenant:key (tenant [A-Za-z0-9_-], key >= 8)"
            raise KeyConfigError(msg)
        keys[key] = tenant
    return keys


def tenant_for(keys: dict[str, str], presented: str | None) -> str | None:
    """The tenant owning `presented`, comparing against every key in constant time."""
    if not presented:
        return None
    found = None
    for key, tenant in keys.items():
        if hmac.compare_digest(key.encode(), presented.encode()):
            found = tenant
    return found
