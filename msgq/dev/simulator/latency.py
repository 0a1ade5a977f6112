"""The latency model: time to first token, then output tokens at a steady pace, with spread.

A real answer takes TTFT (queueing, prompt processing) plus output tokens / tokens-per-second,
and neither is constant: both vary from call to call with a long right tail. Each request
draws its own pair, so a benchmark sees a distribution rather than one fixed delay.

The rule, `spread` = sigma: TTFT = ttft_ms * exp(sigma * z1) and the per-token time =
ms_per_token * exp(sigma * z2), with z1, z2 standard normal draws clipped to +-3 (a lognormal
whose median is the configured value; the clip keeps a seeded run from ever drawing a
pathological hour-long call). Draws come from the simulator's own RNG, seeded and reset with
the state, so a run is repeatable for a given seed and arrival order. Spread 0 is today's
fixed model: `--latency-ms` + `--ms-per-token` x output tokens.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

Z_CLIP = 3.0  # standard deviations: the widest factor is exp(3 * spread)


@dataclass(frozen=True)
class LatencyModel:
    """Configured medians and spread; `ttft_ms` and `ms_per_token` are already resolved."""

    ttft_ms: float = 0.0
    ms_per_token: float = 0.0
    spread: float = 0.0

    @classmethod
    def from_options(
        cls,
        *,
        latency_ms: float,
        ms_per_token: float,
        ttft_ms: float | None = None,
        tokens_per_s: float | None = None,
        spread: float = 0.0,
    ) -> LatencyModel:
        """`ttft_ms` overrides the older `latency_ms`; `tokens_per_s` overrides `ms_per_token`."""
        pace = 1000 / tokens_per_s if tokens_per_s else ms_per_token
        return cls(
            ttft_ms=latency_ms if ttft_ms is None else ttft_ms,
            ms_per_token=pace,
            spread=max(0.0, spread),
        )

    def bounds(self) -> tuple[float, float]:
        """The smallest and largest factor a draw can apply to a median."""
        return math.exp(-Z_CLIP * self.spread), math.exp(Z_CLIP * self.spread)

    def draw(self, rng: random.Random, *, ms_per_token: float | None = None) -> Timing:
        """One request's timing; `ms_per_token` is a scripted answer's own pace (no spread)."""
        ttft = self.ttft_ms * self._factor(rng)
        if ms_per_token is not None:
            return Timing(ttft_ms=ttft, ms_per_token=ms_per_token)
        return Timing(ttft_ms=ttft, ms_per_token=self.ms_per_token * self._factor(rng))

    def _factor(self, rng: random.Random) -> float:
        if self.spread <= 0:
            return 1.0
        z = max(-Z_CLIP, min(Z_CLIP, rng.gauss(0.0, 1.0)))
        return math.exp(self.spread * z)


@dataclass(frozen=True)
class Timing:
    """What one request waits: before its first token, and per output token after it."""

    ttft_ms: float
    ms_per_token: float

    def total_ms(self, output_tokens: int) -> float:
        return self.ttft_ms + self.ms_per_token * output_tokens

    def as_log(self, output_tokens: int) -> dict[str, float]:
        """The request log's record, so tests check the model without timing the wall clock."""
        return {
            "ttft_ms": round(self.ttft_ms, 3),
            "ms_per_token": round(self.ms_per_token, 4),
            "output_tokens": output_tokens,
            "total_ms": round(self.total_ms(output_tokens), 3),
        }
