"""Cost in USD of one Message's usage, from the capabilities table's prices or an override."""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import structlog

from schemas import Prices, capabilities_for
from schemas.capabilities import model_family

log = structlog.get_logger("msgq.job")


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
    """None for a model without a known price: an unknown cost is not a zero cost."""
    return priced(model, usage, prices_file, batch=batch)[0]


def priced(
    model: str, usage: dict[str, Any], prices_file: Path | None = None, *, batch: bool = False
) -> tuple[float | None, str | None]:
    """(cost in USD, None), or (None, why there is no cost) for the record's `cost_note`.

    The tier is chosen by the prompt's size, input + cache writes + cache reads (what the API
    bills a long-context request by), and then prices every token of the request, cache
    writes (5 minutes and 1 hour) and reads included. Message Batches cost half of every price
    (the discount stacks with the cache multipliers): `batch=True`, or the usage's
    `service_tier: "batch"`.
    """
    prices = prices_for(model, prices_file)
    if prices is None:
        return None, f"no price known for model {model!r} (add it to MSGQ_PRICES_FILE)"
    written = int(usage.get("cache_creation_input_tokens") or 0)
    split = usage.get("cache_creation") or {}
    written_1h = int(split.get("ephemeral_1h_input_tokens") or 0)
    written_5m = written - written_1h if split else written
    uncached = int(usage.get("input_tokens") or 0)
    read = int(usage.get("cache_read_input_tokens") or 0)
    tier = prices.tier_for(uncached + written + read)
    total = (
        uncached * tier.input
        + written_5m * tier.cache_write
        + written_1h * tier.write_1h
        + read * tier.cache_read
        + int(usage.get("output_tokens") or 0) * tier.output
    ) / 1_000_000
    if batch or usage.get("service_tier") == "batch":
        total /= 2
    return round(total, 8), None


def cost_fields(
    model: str, usage: dict[str, Any], prices_file: Path | None = None, *, batch: bool = False
) -> dict[str, Any]:
    """`cost_usd` and `cost_note` for a record, best effort: a prices file that broke after
    start-up gives a null cost with the reason, never a lost answer."""
    try:
        cost, note = priced(model, usage, prices_file, batch=batch)
    except Exception as exc:  # a prices file that broke after start-up
        log.error("job.cost_unavailable", error=f"{type(exc).__name__}: {exc}"[:300])
        cost, note = None, f"prices unavailable: {type(exc).__name__}"
    return {"cost_usd": cost, "cost_note": note}
