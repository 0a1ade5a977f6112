"""The simulator's organisation limits: RPM, input- and output-tokens-per-minute token buckets.

Buckets refill continuously up to their capacity (a minute's worth), as the API's do. Input
tokens are taken when a request starts; output tokens as they are produced (so OTPM can go
negative and hold later requests back), and `max_tokens` does not count.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime


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

    def headers(self) -> dict[str, str]:
        missing = max(0.0, self.per_minute - self.tokens)
        reset = datetime.now(UTC).timestamp() + missing * 60 / self.per_minute
        prefix = f"anthropic-ratelimit-{self.name}"
        return {
            f"{prefix}-limit": str(self.per_minute),
            f"{prefix}-remaining": str(max(0, math.floor(self.tokens))),
            f"{prefix}-reset": datetime.fromtimestamp(reset, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


class Limits:
    """Admit or refuse one request; headers describe the buckets after the decision."""

    def __init__(self, *, rpm: int = 0, itpm: int = 0, otpm: int = 0) -> None:
        self.requests = Bucket("requests", rpm) if rpm else None
        self.input = Bucket("input-tokens", itpm) if itpm else None
        self.output = Bucket("output-tokens", otpm) if otpm else None

    @property
    def buckets(self) -> list[Bucket]:
        return [b for b in (self.requests, self.input, self.output) if b is not None]

    def admit(self, input_tokens: int) -> float:
        """0 and the tokens taken, or the seconds to wait (nothing taken)."""
        now = time.monotonic()
        for bucket in self.buckets:
            bucket.refill(now)
        needs = [(self.requests, 1.0), (self.input, float(input_tokens)), (self.output, 1.0)]
        wait = max((b.wait_s(n) for b, n in needs if b is not None), default=0.0)
        if wait > 0:
            return wait
        if self.requests is not None:
            self.requests.tokens -= 1
        if self.input is not None:
            self.input.tokens -= min(input_tokens, self.input.per_minute)
        return 0.0

    def produced(self, output_tokens: int) -> None:
        if self.output is not None:
            self.output.refill(time.monotonic())
            self.output.tokens -= output_tokens

    def headers(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for bucket in self.buckets:
            merged.update(bucket.headers())
        return merged
