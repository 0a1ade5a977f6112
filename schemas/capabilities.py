"""The model capabilities table: which API rules apply to which model, loaded from models.toml."""

from __future__ import annotations

import re
import tomllib
from functools import cache
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class Prices(BaseModel):
    """USD per million tokens."""

    model_config = ConfigDict(frozen=True)

    input: float
    output: float
    cache_write: float
    cache_read: float


class ImageTier(BaseModel):
    """How far the API downscales an image before counting its 28x28 px patches."""

    model_config = ConfigDict(frozen=True)

    max_side_px: int
    max_tokens: int


class Capabilities(BaseModel):
    """What one model accepts. `known=False`: no row matched, so permissive defaults apply."""

    model_config = ConfigDict(frozen=True)

    model: str
    known: bool
    prefill: bool
    sampling: bool
    temperature_with_top_p: bool
    budget_thinking: bool
    max_images: int
    image_tier: Literal["standard", "high"]
    tier: ImageTier
    prices: Prices | None = None


@cache
def _table() -> dict[str, Any]:
    text = resources.files("schemas").joinpath("models.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


# A snapshot date: `-20250514` (API) or `@20250514` (Vertex AI).
_SNAPSHOT_DATE = re.compile(r"[-@]\d{8}$")


def model_family(model: str) -> str:
    """The table id a model id belongs to: snapshot date dropped, family aliases applied.

    `claude-sonnet-4-20250514` -> `claude-sonnet-4-0`, `claude-3-5-haiku-20241022` ->
    `claude-3-5-haiku`; ids without a date come back unchanged.
    """
    undated = _SNAPSHOT_DATE.sub("", model)
    aliases: dict[str, str] = _table()["aliases"]
    return aliases.get(undated, undated)


@cache
def capabilities_for(model: str) -> Capabilities:
    """Look a model up by the longest id prefix of its family; unknown models get the defaults."""
    table = _table()
    rows: dict[str, dict[str, Any]] = table["models"]
    family = model_family(model)
    matches = [prefix for prefix in rows if family.startswith(prefix)]
    row: dict[str, Any] = {}
    if matches:
        row = rows[max(matches, key=len)]
    merged = {**table["default"], **row}
    return Capabilities(
        model=model,
        known=bool(matches),
        tier=ImageTier(**table["tiers"][merged["image_tier"]]),
        **merged,
    )


def tier_limits(model: str) -> ImageTier:
    """The resize limits the API applies to images for this model."""
    return capabilities_for(model).tier


def rate_limit_class(model: str) -> str:
    """The API's rate-limit groups: all Opus 4.x share a bucket, as do Sonnet and Haiku."""
    for family in ("opus", "sonnet", "haiku", "mythos", "fable"):
        if family in model:
            return family
    return model or "default"
