"""The fleet's copy of the Models API (`GET /v1/models`): kept in Redis by the workers, read by
producers and workers alike, so validation checks each model's limits before any call.

A worker reads every page at start and then every `models_refresh_s` (daily); everyone else
reads Redis, at most once a minute per process. Without a copy (no worker has reached the API,
or it is offline) validation falls back to schemas/models.toml alone.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from pydantic import BaseModel, Field
from redis.asyncio import Redis

from msgq.keys import Keyspace
from schemas.capabilities import capabilities_for
from schemas.model_info import ModelLimits, index_models

log = structlog.get_logger("msgq.models")
READ_EVERY_S = 60.0
_unknown_seen: set[str] = set()


class Catalog(BaseModel):
    """What a worker stored: the raw `ModelInfo` objects, where and when they were read."""

    fetched_at: datetime
    base_url: str
    models: list[dict[str, Any]] = Field(default_factory=list)

    def limits(self) -> dict[str, ModelLimits]:
        """By id and undated id (the API resolves aliases; msgq matches the undated id)."""
        parsed = []
        for info in self.models:
            try:
                parsed.append(ModelLimits.from_model_info(info))
            except (KeyError, TypeError, ValueError):
                continue  # one odd entry must not hide the others
        return index_models(parsed)


async def store_catalog(
    redis: Redis, keys: Keyspace, models: list[dict[str, Any]], *, base_url: str
) -> Catalog:
    catalog = Catalog(fetched_at=datetime.now(UTC), base_url=base_url, models=models)
    await redis.set(keys.models_key, catalog.model_dump_json())
    return catalog


async def load_catalog(redis: Redis, keys: Keyspace) -> Catalog | None:
    raw = await redis.get(keys.models_key)
    if raw is None:
        return None
    try:
        return Catalog.model_validate(orjson.loads(raw))
    except (orjson.JSONDecodeError, ValueError):
        log.warning("models.catalog_unreadable")
        return None


class CatalogReader:
    """This process's view of the fleet's catalog, re-read from Redis at most once a minute."""

    def __init__(self, redis: Redis, keys: Keyspace, *, every_s: float = READ_EVERY_S) -> None:
        self.redis, self.keys = redis, keys
        self.every_s = every_s
        self._read_at = -float("inf")
        self._limits: dict[str, ModelLimits] = {}
        self.catalog: Catalog | None = None

    async def limits(self) -> dict[str, ModelLimits]:
        """The Models API's limits by model; empty when no worker has stored any yet."""
        if time.monotonic() - self._read_at >= self.every_s:
            self.catalog = await load_catalog(self.redis, self.keys)
            self._limits = self.catalog.limits() if self.catalog else {}
            self._read_at = time.monotonic()
        return self._limits

    def invalidate(self) -> None:
        self._read_at = -float("inf")


def note_unknown_model(model: str, limits: dict[str, ModelLimits]) -> bool:
    """True (and one log line, once per model per process) for a model neither the table nor
    the Models API knows: it is accepted with permissive rules and no price."""
    if capabilities_for(model).known or model in limits:
        return False
    if model not in _unknown_seen and len(_unknown_seen) < 1000:
        _unknown_seen.add(model)
        log.warning("model.unknown", model=model[:256], rules="permissive", cost="null")
    return True


def unknown_label(model: str) -> str:
    """The metric label for an unknown model: its id for the first 1,000 seen, then `other`
    (a label per arbitrary string would grow the metrics without bound)."""
    return model[:64] if model in _unknown_seen else "other"
