"""The simulator's organisation limits: RPM, input- and output-tokens-per-minute token buckets,
acceleration limits on top (see `accel`), and the `anthropic-ratelimit-*` headers that report them.

Buckets refill continuously up to their capacity (a minute's worth), as the API's do. Input
tokens are taken when a request starts; output tokens as they are produced (so OTPM can go
negative and hold later requests back), and `max_tokens` does not count. The input tokens
charged are the uncached ones (`input_tokens` + `cache_creation_input_tokens`): cache reads do
not count towards ITPM (reference §4.1).

Headers follow the rate-limits page (reference §4.2):
- `-limit` is the configured per-minute limit, as is;
- token `-remaining` is rounded to the nearest thousand (halves up, never below 0); the
  requests bucket is exact;
- `-reset` is an RFC 3339 timestamp (UTC, whole seconds rounded up) of when the bucket is
  full again;
- `anthropic-ratelimit-tokens-*` repeats the most restrictive token bucket in force: of input
  and output, the one with fewer tokens remaining right now (ties: input), since that is the
  one that refuses the next request first.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from msgq.dev.simulator.accel import AccelConfig, Acceleration, Ramp

ROUND_TO = 1000  # token headers are reported to the nearest thousand


def round_tokens(value: float) -> int:
    """Nearest thousand, halves up (499 -> 0, 500 -> 1000), floored at 0."""
    return max(0, math.floor(value / ROUND_TO + 0.5) * ROUND_TO)


def rfc3339(timestamp: float) -> str:
    """UTC, whole seconds rounded up (a reset is never reported earlier than it happens)."""
    return datetime.fromtimestamp(math.ceil(timestamp), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Bucket:
    name: str  # header infix: "requests", "input-tokens", "output-tokens"
    per_minute: int
    tokens: float = field(init=False)
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = float(self.per_minute)

    def refill(self, now: float) -> None:
        self.tokens = min(
            self.per_minute, self.tokens + (now - self.updated) * self.per_minute / 60
        )
        self.updated = now

    def wait_s(self, need: float) -> float:
        """Seconds until `need` tokens are there (0 when they are now)."""
        need = min(need, self.per_minute)
        return 0.0 if self.tokens >= need else (need - self.tokens) * 60 / self.per_minute

    def headers(self, name: str | None = None) -> dict[str, str]:
        missing = max(0.0, self.per_minute - self.tokens)
        reset = time.time() + missing * 60 / self.per_minute
        exact = self.name == "requests"
        remaining = max(0, math.floor(self.tokens)) if exact else round_tokens(self.tokens)
        prefix = f"anthropic-ratelimit-{name or self.name}"
        return {
            f"{prefix}-limit": str(self.per_minute),
            f"{prefix}-remaining": str(remaining),
            f"{prefix}-reset": rfc3339(reset),
        }


@dataclass(frozen=True)
class Refusal:
    """Why a request was not admitted, and for how long."""

    wait_s: float
    reason: str  # "limit" | "acceleration"


class Limits:
    """Admit or refuse one request; headers describe the buckets after the decision."""

    def __init__(
        self, *, rpm: int = 0, itpm: int = 0, otpm: int = 0, accel: AccelConfig | None = None
    ) -> None:
        self.requests = Bucket("requests", rpm) if rpm else None
        self.input = Bucket("input-tokens", itpm) if itpm else None
        self.output = Bucket("output-tokens", otpm) if otpm else None
        self.accel = Acceleration(
            accel or AccelConfig(),
            requests=Ramp(rpm) if rpm else None,
            input=Ramp(itpm) if itpm else None,
            started=time.monotonic(),
        )

    @property
    def buckets(self) -> list[Bucket]:
        return [b for b in (self.requests, self.input, self.output) if b is not None]

    def admit(self, input_tokens: int) -> Refusal | None:
        """None and the tokens taken, or why not (nothing taken). `input_tokens`: uncached."""
        now = time.monotonic()
        for bucket in self.buckets:
            bucket.refill(now)
        needs = [(self.requests, 1.0), (self.input, float(input_tokens)), (self.output, 1.0)]
        wait = max((b.wait_s(n) for b, n in needs if b is not None), default=0.0)
        if wait > 0:
            return Refusal(wait, "limit")
        accel_wait = self.accel.wait_s(now, input_tokens)
        if accel_wait > 0:
            return Refusal(accel_wait, "acceleration")
        self.accel.take(input_tokens)
        if self.requests is not None:
            self.requests.tokens -= 1
        if self.input is not None:
            self.input.tokens -= min(input_tokens, self.input.per_minute)
        return None

    def produced(self, output_tokens: int) -> None:
        if self.output is not None:
            self.output.refill(time.monotonic())
            self.output.tokens -= output_tokens

    def headers(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for bucket in self.buckets:
            merged.update(bucket.headers())
        token_buckets = [b for b in (self.input, self.output) if b is not None]
        if token_buckets:
            tightest = min(token_buckets, key=lambda b: b.tokens)  # min keeps the first on ties
            merged.update(tightest.headers("tokens"))
        return merged
