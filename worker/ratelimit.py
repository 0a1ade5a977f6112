"""The fleet-wide rate limiter: token buckets in Redis, shared by every worker process.

One hash per model class holds three buckets (requests, input tokens, output tokens per minute),
refilled continuously to a minute's worth, as the API's are. Every change is one Lua script, so
concurrent workers never over-admit. Capacities come from configuration; the API's
`anthropic-ratelimit-*` headers may only lower them (a configured limit is a cap: two fleets can
share one organisation), supply them when none is configured, and age out when they stop coming.
A large request that must wait holds a reservation, so small ones cannot starve it. A 429 cools the
whole fleet down for its retry-after; a spend-limit answer pauses sending until lifted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from msgq.group_commit import GroupCommit
from msgq.keys import Keyspace
from msgq.settings import Settings
from msgq.tenancy.scheduling import resume_fleet
from schemas.capabilities import rate_limit_class
from worker.ratelimit_scripts import ACQUIRE, ADJUST, COOL_DOWN

BUCKETS = ("requests", "input-tokens", "output-tokens")


@dataclass(frozen=True)
class Limits:
    """Per-minute limits for one model class; 0 means not configured (learn from headers)."""

    rpm: int = 0
    itpm: int = 0
    otpm: int = 0


@dataclass(frozen=True)
class Admission:
    wait_s: float
    reason: str  # "" when admitted; else "r", "i", "o", "cooldown" or "paused"
    count: int | None = None  # admitted: the bucket's admission count (for `settle`)

    @property
    def admitted(self) -> bool:
        return self.wait_s <= 0


model_class = rate_limit_class  # the name this module has always used


class RateLimiter:
    """Acquire before each call, then report what really happened (usage, headers, 429s)."""

    def __init__(
        self,
        redis: Redis,
        keys: Keyspace,
        limits: dict[str, Limits],
        *,
        learned_ttl_s: float = 600.0,
        hold_slack_s: float = 5.0,
        large_fraction: float = 0.5,
        scope: str | None = None,
    ) -> None:
        """`scope` gives this limiter buckets of its own (a tenant's share caps)."""
        self.redis, self.keys = redis, keys
        self.scope = scope
        self.limits = limits
        self.learned_ttl_ms = int(learned_ttl_s * 1000)
        self.hold_slack_ms = int(hold_slack_s * 1000)
        self.large_fraction = large_fraction
        self._acquire = redis.register_script(ACQUIRE)
        self._adjust = redis.register_script(ADJUST)
        self._cool = redis.register_script(COOL_DOWN)
        self._learned = False  # this process has seen anthropic-ratelimit-* headers

    @classmethod
    def from_settings(cls, redis: Redis, settings: Settings) -> RateLimiter:
        """The fleet's limiter with the limits configured in `settings` (MSGQ_RATE_LIMITS)."""
        limits = {name: Limits(**values) for name, values in settings.rate_limits.items()}
        return cls(redis, settings.keys, limits)

    def unmetered(self, model: str) -> bool:
        """No limit configured for this model's class, and none learned by this process: an
        acquire would only check the pause and the cool-down."""
        lim = self._limits_for(model_class(model))
        return not (self._learned or lim.rpm or lim.itpm or lim.otpm)

    def _bucket(self, model_cls: str) -> str:
        return self.keys.bucket_key(f"{model_cls}:{self.scope}" if self.scope else model_cls)

    def _limits_for(self, model_cls: str) -> Limits:
        return self.limits.get(model_cls) or self.limits.get("default") or Limits()

    def gate_keys(self, model: str) -> list[str]:
        """The keys `acquire` reads for this model: its class's bucket, cool-down, the pause."""
        cls = model_class(model)
        return [self._bucket(cls), self.keys.cooldown_key(cls), self.keys.pause_key]

    def step_args(
        self, model: str, *, now_ms: int, cost: tuple[int, int], holder: str
    ) -> list[Any]:
        """The Lua `acquire` step's arguments for one request of (input, output) tokens."""
        lim = self._limits_for(model_class(model))
        return [
            now_ms,
            1,
            *cost,
            lim.rpm,
            lim.itpm,
            lim.otpm,
            holder or "-",
            self.learned_ttl_ms,
            self.hold_slack_ms,
            self.large_fraction,
        ]

    async def acquire(
        self, model: str, *, input_tokens: int, output_tokens: int, now_ms: int, holder: str = ""
    ) -> Admission:
        """`holder` names the asker (a job ID), so a large request can hold a reservation."""
        args = self.step_args(
            model, now_ms=now_ms, cost=(input_tokens, output_tokens), holder=holder
        )
        reply = await self._acquire(keys=self.gate_keys(model), args=args)
        wait_ms, why = reply[0], reply[1]
        count = int(reply[2]) if len(reply) > 2 else None
        reason = why.decode() if isinstance(why, bytes) else why
        return Admission(int(wait_ms) / 1000, reason, count)

    async def settle(
        self,
        model: str,
        *,
        input_delta: int,
        output_delta: int,
        headers: dict[str, str] | None = None,
        requests: int = 0,
        group: GroupCommit | None = None,
        admitted_n: int | None = None,
    ) -> None:
        """Refund (positive) or charge (negative) the estimate's error; adopt header limits.
        `requests=1` also refunds the request itself (an admission that was not used).
        `group`: sent with other jobs' endings (`msgq.group_commit`), not on its own.
        `admitted_n`: the bucket's admission count when the call was admitted (ADJUST)."""
        lim = self._limits_for(model_class(model))
        self._learned = self._learned or headers_say_limits(headers)
        if not (self._learned or lim.rpm or lim.itpm or lim.otpm):
            return  # nothing configured or ever learned in this process: no bucket to adjust
        learned: list[Any] = []
        for name in BUCKETS:
            prefix = f"anthropic-ratelimit-{name}"
            learned += [
                _int_header(headers, f"{prefix}-limit"),
                _int_header(headers, f"{prefix}-remaining"),
            ]
        keys = [self._bucket(model_class(model))]
        args = [
            requests,
            input_delta,
            output_delta,
            *learned,
            lim.rpm,
            lim.itpm,
            lim.otpm,
            int(time.time() * 1000),
            self.learned_ttl_ms,
            "" if admitted_n is None else admitted_n,
        ]
        if group is None:
            await self._adjust(keys=keys, args=args)
        else:
            await group.call(self._adjust, keys, args, merge=True)  # one a bucket a batch

    async def gate_wait(self, model: str) -> tuple[float, str]:
        """(seconds, why) until the fleet may send for this model: the pause, then the model
        class's cool-down; (0, "") when clear. The same checks `acquire` starts with."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.pttl(self.keys.pause_key)
            pipe.pttl(self.keys.cooldown_key(model_class(model)))
            pause_ms, cool_ms = await pipe.execute()
        return _gate(pause_ms, cool_ms)

    async def gate_and_known(self, model: str) -> tuple[float, str, bool]:
        """`gate_wait` and `known` for the model's class, read in one round trip (the
        dispatcher asks both before each class's admission)."""
        cls = model_class(model)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.pttl(self.keys.pause_key)
            pipe.pttl(self.keys.cooldown_key(cls))
            pipe.hget(self._bucket(cls), "L")
            pause_ms, cool_ms, learned_at = await pipe.execute()
        return (*_gate(pause_ms, cool_ms), self._known(cls, learned_at))

    async def known(self, model_cls: str) -> bool:
        """A limit is configured for this class, or one learned from headers is still fresh:
        admission can be sized by the buckets rather than by a slow-start window."""
        learned_at = await self.redis.hget(self._bucket(model_cls), "L")  # type: ignore[misc]
        return self._known(model_cls, learned_at)

    def _known(self, model_cls: str, learned_at: bytes | None) -> bool:
        lim = self._limits_for(model_cls)
        if lim.rpm or lim.itpm or lim.otpm:
            return True
        if learned_at is None:
            return False
        return float(learned_at) + self.learned_ttl_ms > time.time() * 1000

    async def cool_down(self, model: str, seconds: float) -> None:
        """Hold the whole fleet back for this model class (a 429's retry-after)."""
        await self._cool(
            keys=[self.keys.cooldown_key(model_class(model)), self.keys.cooling_key],
            args=[max(1, int(seconds * 1000))],
        )

    async def pause(self, reason: str, seconds: int | None) -> None:
        """Stop the fleet sending (spend limit). None or 0: until `msgq resume`."""
        await self.redis.set(self.keys.pause_key, reason, ex=seconds or None)  # Redis refuses ex=0

    async def resume(self) -> bool:
        return await resume_fleet(self.redis, self.keys)

    async def paused(self) -> str | None:
        value = await self.redis.get(self.keys.pause_key)
        return None if value is None else value.decode()


def _gate(pause_ms: int, cool_ms: int) -> tuple[float, str]:
    """What the pause's and the cool-down's PTTLs say: (seconds to wait, why), or (0, "")."""
    if pause_ms != -2:  # -1: paused without expiry (until `msgq resume`)
        return (pause_ms / 1000 if pause_ms > 0 else 60.0), "paused"
    if cool_ms > 0:
        return cool_ms / 1000, "cooldown"
    return 0.0, ""


def headers_say_limits(headers: dict[str, str] | None) -> bool:
    return any(name.startswith("anthropic-ratelimit-") for name in headers or {})


def _int_header(headers: dict[str, str] | None, name: str) -> str:
    value = (headers or {}).get(name, "")
    return value if value.isdigit() else ""
