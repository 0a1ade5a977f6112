"""Acceleration limits: a sharp rise in traffic is refused (429) even below the per-minute limit.

The API documents the effect ("a sharp increase in usage" gives 429s; ramp up gradually) but
not the rule, so the simulator uses a simple one with the documented shape. Time is cut into
fixed windows of `window_s` seconds. In each window a dimension (requests, input tokens) may
admit at most

    allowance = max(fraction * per_minute_limit, growth * admitted_in_previous_window)

so from idle a client gets a burst of `fraction` of its per-minute limit, and sustained
traffic may then grow by `growth` times per window (doubling, by default) until the ordinary
token buckets are what binds. An idle window resets the ramp. The first request of a window is
always admitted, so one request larger than the allowance is not starved. A refusal's
`retry-after` is the time left in the window. Only admitted traffic counts towards the next
window's allowance: hammering through 429s does not speed the ramp up.

Off unless `fraction` > 0, and it acts only on limits that are configured (RPM, ITPM).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AccelConfig:
    fraction: float = 0.0  # 0: acceleration limits off
    window_s: float = 5.0
    growth: float = 2.0

    @property
    def enabled(self) -> bool:
        return self.fraction > 0 and self.window_s > 0


@dataclass
class Ramp:
    """One dimension's window counts (requests, or input tokens)."""

    per_minute: int
    window: int = -1
    used: float = 0.0
    previous: float = 0.0

    def roll(self, window: int) -> None:
        if window != self.window:
            # A gap of more than one window means the previous window was idle.
            self.previous = self.used if window == self.window + 1 else 0.0
            self.used, self.window = 0.0, window

    def allows(self, need: float, config: AccelConfig) -> bool:
        allowance = max(config.fraction * self.per_minute, config.growth * self.previous)
        return self.used == 0 or self.used + need <= allowance


@dataclass
class Acceleration:
    """Ramps for the configured dimensions; `check` then `take`, as the buckets do."""

    config: AccelConfig
    requests: Ramp | None = None
    input: Ramp | None = None
    started: float = field(default=0.0)

    def _window(self, now: float) -> int:
        return int((now - self.started) // self.config.window_s)

    def wait_s(self, now: float, input_tokens: int) -> float:
        """0 when the request fits this window's allowance, else the seconds to its end."""
        if not self.config.enabled:
            return 0.0
        window = self._window(now)
        fits = True
        for ramp, need in ((self.requests, 1.0), (self.input, float(input_tokens))):
            if ramp is not None:
                ramp.roll(window)
                fits = fits and ramp.allows(need, self.config)
        if fits:
            return 0.0
        return self.started + (window + 1) * self.config.window_s - now

    def take(self, input_tokens: int) -> None:
        if self.requests is not None:
            self.requests.used += 1
        if self.input is not None:
            self.input.used += input_tokens
