"""The model capabilities table: which API rules apply to which model, loaded from models.toml."""

from __future__ import annotations

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
    budget_thinking: bool
    max_images: int
    image_tier: Literal["standard", "high"]
    tier: ImageTier
    prices: Prices | None = None


@cache
def _table() -> dict[str, Any]:
    text = resources.files("schemas").joinpath("models.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


@cache
def capabilities_for(model: str) -> Capabilities:
    """Look a model up by the longest matching id prefix; unknown models get the defaults."""
    table = _table()
    rows: dict[str, dict[str, Any]] = table["models"]
    matches = [prefix for prefix in rows if model.startswith(prefix)]
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
