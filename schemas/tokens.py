"""Token arithmetic shared by the worker's limiter, the caption dry-run and the simulator."""

from __future__ import annotations

import math

from schemas.capabilities import tier_limits

PATCH_PX = 28
# URL and Files API images are fetched by the API, not by msgq: their size is unknown up front
# and counted as this (the worker's estimate, the caption dry run and the simulator agree).
UNFETCHED_SIZE_PX = (1000, 1000)


def text_tokens(text: str) -> int:
    """About one token per four characters, the API docs' rule of thumb."""
    return math.ceil(len(text) / 4)


def resized_size(
    width: int, height: int, model: str, *, max_side_px: int | None = None
) -> tuple[int, int]:
    """The API's downscale: long edge and 28x28 patch count within the model tier's limits."""
    tier = tier_limits(model)
    side = min(tier.max_side_px, max_side_px) if max_side_px else tier.max_side_px
    scale = min(1.0, side / max(width, height, 1))
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    while math.ceil(w / PATCH_PX) * math.ceil(h / PATCH_PX) > tier.max_tokens:
        scale *= 0.99
        w, h = max(1, round(width * scale)), max(1, round(height * scale))
    return w, h


def image_tokens(width: int, height: int, model: str) -> int:
    """ceil(w/28) * ceil(h/28) after the tier's resize (so never above the tier's cap)."""
    w, h = resized_size(width, height, model)
    return math.ceil(w / PATCH_PX) * math.ceil(h / PATCH_PX)
