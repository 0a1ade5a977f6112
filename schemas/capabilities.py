"""The model capabilities table: which API rules apply to which model, loaded from models.toml."""

from __future__ import annotations

import re
import tomllib
from functools import cache
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class PriceTier(BaseModel):
    """USD per million tokens at one prompt size. `cache_write` is the 5-minute write;
    `cache_write_1h` defaults to twice the input price (the API's multiplier)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: float
    output: float
    cache_write: float
    cache_read: float
    cache_write_1h: float | None = None

    @property
    def write_1h(self) -> float:
        return self.cache_write_1h if self.cache_write_1h is not None else self.input * 2


class LongContextTier(PriceTier):
    """The prices of a request whose prompt is above `above_input_tokens` (all of it)."""

    above_input_tokens: int


class Prices(PriceTier):
    """A model's prices: the base tier, and the long-context tier where the API has one."""

    long_context: LongContextTier | None = None

    def tier_for(self, prompt_tokens: int) -> PriceTier:
        """The tier a request of `prompt_tokens` (input + cache writes + reads) is billed at."""
        tier = self.long_context
        return tier if tier is not None and prompt_tokens > tier.above_input_tokens else self


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
    token_ratio: float = 1.0  # the newer tokenizer (4.7 on) counts ~1.3x the older one's tokens


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


def table_models() -> list[str]:
    """The model ids (or id prefixes) models.toml has a row for."""
    return sorted(_table()["models"])
