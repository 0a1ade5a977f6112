"""Cost in USD of one Message's usage, from the capabilities table's prices or an override."""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Any

from schemas import Prices, capabilities_for
from schemas.capabilities import model_family


@cache
def _overrides(path: Path | None) -> dict[str, Prices]:
    if path is None:
        return {}
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return {model: Prices(**row) for model, row in data.get("prices", {}).items()}


def check_prices_file(path: Path) -> None:
    """Read and check an override file at start-up; raises ValueError saying what is wrong.

    Checked once, up front, so a bad file stops the process with one line instead of failing
    the cost of every answer later (the answers themselves are always kept).
    """
    try:
        _overrides(path)
    except OSError as exc:
        msg = f"cannot read {path}: {exc.strerror}"
        raise ValueError(msg) from None
    except (tomllib.TOMLDecodeError, TypeError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        msg = f"{path} is not a valid prices file ([prices.<model>] input/output/... rows): {first}"
        raise ValueError(msg) from None


def prices_for(model: str, prices_file: Path | None = None) -> Prices | None:
    """An override file (`[prices.<model-prefix>]` rows) beats the bundled table.

    Override rows match the model id as sent, then its family (`claude-sonnet-4-20250514` is
    also `claude-sonnet-4-0`), like the bundled table.
    """
    overrides = _overrides(prices_file)
    for name in (model, model_family(model)):
        matches = [prefix for prefix in overrides if name.startswith(prefix)]
        if matches:
            return overrides[max(matches, key=len)]
    return capabilities_for(model).prices


def cost_usd(
    model: str, usage: dict[str, Any], prices_file: Path | None = None, *, batch: bool = False
) -> float | None:
    """None for a model without a known price: an unknown cost is not a zero cost.

    Message Batches cost half of every price, cache writes and reads included (the discount
    stacks with the cache multipliers): `batch=True`, or the usage's `service_tier: "batch"`.
    """
    prices = prices_for(model, prices_file)
    if prices is None:
        return None
    written = int(usage.get("cache_creation_input_tokens") or 0)
    split = usage.get("cache_creation") or {}
    written_1h = int(split.get("ephemeral_1h_input_tokens") or 0)
    written_5m = written - written_1h if split else written
    total = (
        int(usage.get("input_tokens") or 0) * prices.input
        + written_5m * prices.cache_write
        + written_1h * prices.input * 2
        + int(usage.get("cache_read_input_tokens") or 0) * prices.cache_read
        + int(usage.get("output_tokens") or 0) * prices.output
    ) / 1_000_000
    if batch or usage.get("service_tier") == "batch":
        total /= 2
    return round(total, 8)
