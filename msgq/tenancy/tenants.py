"""Per-tenant configuration (`MSGQ_TENANTS_FILE`, TOML), validated at start-up.

    [tenants.acme]
    weight = 2                      # share of the org's tokens while backlogged (default 1)
    default_priority = "interactive"
    rpm_share = 0.5                 # optional caps on its share of RPM / ITPM / OTPM (0..1]
    itpm_share = 0.5
    otpm_share = 0.5
    budget_usd_day = 10.0           # optional budgets, reserved at admission, never overshot
    budget_usd_month = 200.0
    on_budget = "wait"              # or "fail"
    batches_lane = "batch"          # lane for its /v1/messages/batches requests
    callback_url = "https://hooks.acme.example/msgq"   # default webhook target
    webhook_secret = "whsec_..."    # Standard Webhooks signing secret (base64 after whsec_)

Unlisted tenants get weight 1, no caps and no budget.
"""

from __future__ import annotations

import re
import tomllib
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from msgq.webhooks.signing import secret_key
from schemas import Lane, Priority

TENANT_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class TenantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weight: float = Field(default=1.0, gt=0, le=1000)
    default_priority: Priority = Priority.DEFAULT
    rpm_share: float | None = Field(default=None, gt=0, le=1)
    itpm_share: float | None = Field(default=None, gt=0, le=1)
    otpm_share: float | None = Field(default=None, gt=0, le=1)
    budget_usd_day: float | None = Field(default=None, ge=0)
    budget_usd_month: float | None = Field(default=None, ge=0)
    on_budget: Literal["wait", "fail"] = "wait"
    batches_lane: Lane | None = None
    callback_url: str | None = None
    webhook_secret: SecretStr | None = None

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret_format(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            secret_key(value.get_secret_value())  # at start-up, not at the first delivery
        return value

    @property
    def has_budget(self) -> bool:
        return self.budget_usd_day is not None or self.budget_usd_month is not None


DEFAULT = TenantConfig()


class TenantsFileError(ValueError):
    """The tenants file is unusable; the message names the tenant and the field."""


class Tenants:
    """Lookup by tenant name; `get` never fails (unlisted tenants get the defaults)."""

    def __init__(self, tenants: dict[str, TenantConfig] | None = None) -> None:
        self.tenants = tenants or {}

    def get(self, tenant: str | None) -> TenantConfig:
        return self.tenants.get(tenant or "", DEFAULT)

    def names(self) -> list[str]:
        return sorted(self.tenants)


def parse_tenants(text: str, source: str = "MSGQ_TENANTS_FILE") -> Tenants:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = f"{source}: not valid TOML: {exc}"
        raise TenantsFileError(msg) from None
    unknown = set(data) - {"tenants"}
    if unknown:
        msg = f"{source}: unknown table(s) {sorted(unknown)}; put each tenant under [tenants.NAME]"
        raise TenantsFileError(msg)
    tenants: dict[str, TenantConfig] = {}
    for name, row in (data.get("tenants") or {}).items():
        if not re.match(TENANT_PATTERN, name):
            msg = f"{source}: tenant name {name!r} must be 1-64 of A-Z a-z 0-9 _ -"
            raise TenantsFileError(msg)
        try:
            tenants[name] = TenantConfig.model_validate(row)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            msg = f"{source}: tenants.{name}.{where}: {first['msg']}"
            raise TenantsFileError(msg) from None
    return Tenants(tenants)


@cache
def load_tenants(path: Path | None) -> Tenants:
    """Read once per process; raises TenantsFileError with one line saying what is wrong."""
    if path is None:
        return Tenants()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"MSGQ_TENANTS_FILE: cannot read {path}: {exc.strerror}"
        raise TenantsFileError(msg) from None
    return parse_tenants(text, f"MSGQ_TENANTS_FILE ({path})")
