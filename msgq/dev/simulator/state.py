"""The simulator's mutable state: configuration, scripted answers, fault dice, the request log."""

from __future__ import annotations

import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import click
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from msgq.dev.simulator.accel import AccelConfig
from msgq.dev.simulator.cache import PromptCache
from msgq.dev.simulator.latency import LatencyModel, Timing
from msgq.dev.simulator.limits import Limits


class Scripted(BaseModel):
    """One scripted answer. With no status it is an ordinary 200 (after `delay_s`)."""

    model_config = ConfigDict(extra="forbid")

    status: int = 200
    delay_s: float = Field(default=0.0, ge=0, le=3600)
    headers: dict[str, str] = Field(default_factory=dict)
    error_type: str | None = None
    message: str | None = None
    error_code: str | None = None
    body: Any = None
    drop: bool = False
    drop_mid_body: bool = False
    malformed: bool = False
    output_tokens: int | None = Field(default=None, ge=0, le=1_000_000)  # min(N, max_tokens)
    ms_per_token: float | None = Field(default=None, ge=0, le=1000)  # this answer's pace
    # Streamed answers only, halfway through the content: an `error` event of this type
    # (overloaded_error, api_error, ...), a cut connection, or silence (not even a ping).
    stream_error: str | None = None
    stream_cut: bool = False
    stream_stall_s: float = Field(default=0.0, ge=0, le=3600)
    # `batches:create` only: the batch is created, then the error status is answered (a
    # gateway's 408/502/504 after the API took the request).
    create_first: bool = False


@dataclass
class SimConfig:
    seed: int = 0
    api_key: str | None = None  # None: any non-empty key is accepted
    latency_ms: float = 0.0
    ms_per_output_token: float = 0.0
    ttft_ms: float | None = None  # None: latency_ms (see latency.py)
    tokens_per_s: float | None = None  # None: 1000 / ms_per_output_token
    latency_spread: float = 0.0  # lognormal sigma; 0: every request the same
    accel: AccelConfig = field(default_factory=AccelConfig)  # off unless fraction > 0
    fault_rates: dict[int, float] = field(default_factory=dict)  # status -> probability
    hang_rate: float = 0.0
    drop_rate: float = 0.0
    log_size: int = 1000
    rpm: int = 0  # 0: unlimited
    itpm: int = 0
    otpm: int = 0
    output_tokens: int | None = None  # every reply min(N, max_tokens) tokens long
    stream_faults: dict[str, float] = field(default_factory=dict)  # error|cut|stall -> rate


@dataclass
class SimState:
    config: SimConfig
    scripts: dict[str, deque[Scripted]] = field(default_factory=dict)
    log: deque[dict[str, Any]] = field(default_factory=deque)
    received: int = 0
    by_model: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    started_at: float = field(default_factory=time.time)
    rng: random.Random = field(default_factory=random.Random)
    # Its own stream, so turning the latency spread on does not change which requests fault.
    latency_rng: random.Random = field(default_factory=random.Random)
    latency: LatencyModel = field(init=False)
    limits: Limits = field(init=False)
    cache: PromptCache = field(default_factory=PromptCache)
    generation: int = 0

    def __post_init__(self) -> None:
        c = self.config
        self.latency = LatencyModel.from_options(
            latency_ms=c.latency_ms,
            ms_per_token=c.ms_per_output_token,
            ttft_ms=c.ttft_ms,
            tokens_per_s=c.tokens_per_s,
            spread=c.latency_spread,
        )
        self.log = deque(maxlen=self.config.log_size)
        self._reseed()

    def _reseed(self) -> None:
        self.rng.seed(self.config.seed)
        self.latency_rng.seed(f"latency:{self.config.seed}")
        c = self.config
        self.limits = Limits(rpm=c.rpm, itpm=c.itpm, otpm=c.otpm, accel=c.accel)
        self.cache = PromptCache()

    def reset(self) -> None:
        # Requests still held from before (delay_s) must not count in the new generation.
        self.generation += 1
        self.scripts.clear()
        self.log.clear()
        self.received = 0
        self.by_model.clear()
        self.by_status.clear()
        self._reseed()

    def next_scripted(self, api_key: str) -> Scripted | None:
        """A key's own script first, then the shared one ("*")."""
        for name in (api_key, "*"):
            queue = self.scripts.get(name)
            if queue:
                return queue.popleft()
        return None

    def roll_fault(self) -> Scripted | None:
        """Random faults at the configured rates (seeded, so a run is repeatable)."""
        roll = self.rng.random()
        for status, rate in sorted(self.config.fault_rates.items()):
            if roll < rate:
                headers = {"retry-after": "1"} if status == 429 else {}
                return Scripted(status=status, headers=headers)
            roll -= rate
        if roll < self.config.hang_rate:
            return Scripted(delay_s=3600)
        roll -= self.config.hang_rate
        if roll < self.config.drop_rate:
            return Scripted(drop=True)
        return None

    def roll_stream_fault(self) -> str | None:
        """A mid-stream fault kind at the configured rates (seeded), or None."""
        roll = self.rng.random() if self.config.stream_faults else 1.0
        for kind, rate in sorted(self.config.stream_faults.items()):
            if roll < rate:
                return kind
            roll -= rate
        return None

    def output_tokens(self, scripted: Scripted) -> int | None:
        return (
            self.config.output_tokens if scripted.output_tokens is None else scripted.output_tokens
        )

    def timing(self, scripted: Scripted) -> Timing:
        """This request's draw from the latency model (a scripted pace wins, unspread)."""
        return self.latency.draw(self.latency_rng, ms_per_token=scripted.ms_per_token)

    def stats(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "by_model": dict(self.by_model),
            "by_status": {str(k): v for k, v in self.by_status.items()},
            "uptime_s": round(time.time() - self.started_at, 3),
        }


STATE = web.AppKey("sim_state", SimState)


def mask_key(value: str) -> str:
    """Show enough of a key to tell two apart, never enough to use it."""
    return value[:4] + "…" + value[-2:] if len(value) > 8 else "…"


STREAM_FAULT_KINDS = ("error", "cut", "stall")


def parse_stream_faults(items: tuple[str, ...]) -> dict[str, float]:
    """`--stream-fault error=0.05 --stream-fault cut=0.01 --stream-fault stall=0.01`."""
    rates: dict[str, float] = {}
    for item in items:
        kind, _, rate = item.strip().partition("=")
        try:
            value = float(rate)
        except ValueError:
            value = -1.0
        if kind not in STREAM_FAULT_KINDS or not 0 <= value <= 1:
            msg = f"{item!r} is not KIND=RATE with KIND one of {', '.join(STREAM_FAULT_KINDS)}"
            raise click.BadParameter(msg, param_hint="--stream-fault")
        rates[kind] = value
    return rates
