"""Fleet policy, decided by the fleet: whether jobs go through the scheduler, and each tenant's
priority, weight, budget, lane and webhook.

Workers publish their settings here at start-up (and again every minute); producers read them
back instead of trusting their own environment. A producer started without the tenants file, or
with another `MSGQ_SCHEDULER`, then still gives a tenant's job the fleet's priority and webhook
and places it where the fleet takes jobs from. Before any worker has published, a producer falls
back to its own settings (and the dispatcher drains the scheduler's queues even when switched
off, so a job placed there by such a producer is never stranded).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson
from redis.asyncio import Redis

from msgq.settings import Settings
from msgq.tenancy.tenants import Tenants, TenantsFileError, load_tenants, parse_tenants

CACHE_S = 5.0


@dataclass(frozen=True)
class FleetPolicy:
    scheduler: bool
    tenants: Tenants
    source: str  # "fleet" (published by the workers) or "local" (this process's settings)
    # The version the workers send for a job that names none: what `/v1/jobs` records for a
    # producer that sends no anthropic-version header, so the record says what was sent.
    anthropic_version: str
    # Whether the workers hold MSGQ_WEBHOOK_SECRET (None: not published, so not known): a
    # callback nothing can sign is refused at submission instead of never being delivered.
    webhook_signing: bool | None = None


def local_policy(settings: Settings) -> FleetPolicy:
    tenants = load_tenants(settings.tenants_file)
    return FleetPolicy(settings.scheduler, tenants, "local", settings.anthropic_version)


async def publish(redis: Redis, settings: Settings) -> None:
    """A worker states the fleet's policy: its own settings, which every worker shares."""
    text = None
    if settings.tenants_file is not None:
        text = settings.tenants_file.read_text(encoding="utf-8")
    value = {
        "scheduler": settings.scheduler,
        "tenants_toml": text,
        "anthropic_version": settings.anthropic_version,
        "webhook_signing": settings.webhook_secret is not None,
    }
    await redis.set(settings.keys.fleet_policy, orjson.dumps(value))


class PolicyReader:
    """A producer's view of the fleet policy, read at most every `CACHE_S`."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis, self.settings = redis, settings
        self._policy: FleetPolicy | None = None
        self._read_at = 0.0
        self._raw: bytes | None = None

    async def get(self) -> FleetPolicy:
        now = time.monotonic()
        if self._policy is not None and now - self._read_at < CACHE_S:
            return self._policy
        raw = await self.redis.get(self.settings.keys.fleet_policy)
        if self._policy is None or raw != self._raw:
            self._policy, self._raw = self._parse(raw), raw
        self._read_at = now
        return self._policy

    def _parse(self, raw: bytes | None) -> FleetPolicy:
        if raw is None:
            return local_policy(self.settings)
        try:
            data = orjson.loads(raw)
            text = data.get("tenants_toml")
            tenants = Tenants() if text is None else parse_tenants(text, "the fleet's tenants")
            # A worker of the previous release publishes no version: this process's then.
            version = str(data.get("anthropic_version") or self.settings.anthropic_version)
            signing = data.get("webhook_signing")
            signs = None if signing is None else bool(signing)
            return FleetPolicy(bool(data["scheduler"]), tenants, "fleet", version, signs)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, TenantsFileError):
            return local_policy(self.settings)
