"""The fleet-wide rate limiter: token buckets in Redis, shared by every worker process.

One hash per model class holds three buckets (requests, input tokens, output tokens per minute),
refilled continuously to a minute's worth, as the API's are. Every change is one Lua script, so
concurrent workers never over-admit. Capacities come from configuration and are corrected from
the API's `anthropic-ratelimit-*` headers (so wrong or absent limits heal). A 429 cools the
whole fleet down for its retry-after; a spend-limit answer pauses sending until lifted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from worker.keys import PAUSE_KEY, bucket_key, cooldown_key

BUCKETS = ("requests", "input-tokens", "output-tokens")

# KEYS: bucket hash, cooldown, pause. ARGV: now_ms, cost r/i/o, configured caps r/i/o (0 = none).
# Returns {0} when admitted, {wait_ms, why} otherwise; nothing is taken unless all three fit.
ACQUIRE = """
if redis.call('EXISTS', KEYS[3]) == 1 then
  local ttl = redis.call('PTTL', KEYS[3])
  return {ttl > 0 and ttl or 60000, 'paused'}
end
local cool = redis.call('PTTL', KEYS[2])
if cool > 0 then return {cool, 'cooldown'} end
local now = tonumber(ARGV[1])
local h = redis.call('HMGET', KEYS[1], 'r', 'i', 'o', 't', 'R', 'I', 'O')
local last = tonumber(h[4]) or now
local names = {'r', 'i', 'o'}
local tokens, caps, wait, why = {}, {}, 0, ''
for n = 1, 3 do
  local cap = tonumber(h[n + 4]) or tonumber(ARGV[n + 4])
  caps[n] = cap
  if cap > 0 then
    local t = tonumber(h[n]) or cap
    t = math.min(cap, t + (now - last) * cap / 60000)
    tokens[n] = t
    local need = math.min(tonumber(ARGV[n + 1]), cap)
    if t < need then
      local w = math.ceil((need - t) * 60000 / cap)
      if w > wait then wait, why = w, names[n] end
    end
  end
end
if wait == 0 then
  for n = 1, 3 do
    if caps[n] > 0 then tokens[n] = tokens[n] - math.min(tonumber(ARGV[n + 1]), caps[n]) end
  end
end
for n = 1, 3 do
  if caps[n] > 0 then redis.call('HSET', KEYS[1], names[n], tostring(tokens[n])) end
end
redis.call('HSET', KEYS[1], 't', tostring(now))
if wait > 0 then return {wait, why} end
return {0, ''}
"""

# KEYS: bucket hash. ARGV: deltas r/i/o (positive refunds), then for each bucket the learned
# cap and remaining from headers ('' when absent). Refunds never exceed the cap.
ADJUST = """
local names, caps = {'r', 'i', 'o'}, {'R', 'I', 'O'}
for n = 1, 3 do
  local learned = ARGV[3 + 2 * n - 1]
  if learned ~= '' then redis.call('HSET', KEYS[1], caps[n], learned) end
  local cap = tonumber(redis.call('HGET', KEYS[1], caps[n]) or '')
  local t = tonumber(redis.call('HGET', KEYS[1], names[n]) or '')
  if t then
    t = t + tonumber(ARGV[n])
    if cap then t = math.min(t, cap) end
    local remaining = ARGV[3 + 2 * n]
    if remaining ~= '' then t = math.min(t, tonumber(remaining)) end
    redis.call('HSET', KEYS[1], names[n], tostring(t))
  end
end
return 1
"""

# KEYS: cooldown. ARGV: ms. Only ever lengthens the cool-down.
COOL_DOWN = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
"""


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

    @property
    def admitted(self) -> bool:
        return self.wait_s <= 0


def model_class(model: str) -> str:
    """The API's rate-limit groups: all Opus 4.x share a bucket, as do Sonnet and Haiku."""
    for family in ("opus", "sonnet", "haiku", "mythos", "fable"):
        if family in model:
            return family
    return model or "default"


class RateLimiter:
    """Acquire before each call, then report what really happened (usage, headers, 429s)."""

    def __init__(self, redis: Redis, limits: dict[str, Limits]) -> None:
        self.redis = redis
        self.limits = limits
        self._acquire = redis.register_script(ACQUIRE)
        self._adjust = redis.register_script(ADJUST)
        self._cool = redis.register_script(COOL_DOWN)
        self._learned = False  # this process has seen anthropic-ratelimit-* headers

    def _limits_for(self, model_cls: str) -> Limits:
        return self.limits.get(model_cls) or self.limits.get("default") or Limits()

    async def acquire(
        self, model: str, *, input_tokens: int, output_tokens: int, now_ms: int
    ) -> Admission:
        cls = model_class(model)
        lim = self._limits_for(cls)
        wait_ms, why = await self._acquire(
            keys=[bucket_key(cls), cooldown_key(cls), PAUSE_KEY],
            args=[now_ms, 1, input_tokens, output_tokens, lim.rpm, lim.itpm, lim.otpm],
        )
        return Admission(int(wait_ms) / 1000, why.decode() if isinstance(why, bytes) else why)

    async def settle(
        self,
        model: str,
        *,
        input_delta: int,
        output_delta: int,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Refund (positive) or charge (negative) the estimate's error; adopt header limits."""
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
        await self._adjust(
            keys=[bucket_key(model_class(model))], args=[0, input_delta, output_delta, *learned]
        )

    async def cool_down(self, model: str, seconds: float) -> None:
        """Hold the whole fleet back for this model class (a 429's retry-after)."""
        await self._cool(
            keys=[cooldown_key(model_class(model))], args=[max(1, int(seconds * 1000))]
        )

    async def pause(self, reason: str, seconds: int | None) -> None:
        """Stop the fleet sending (spend limit). None or 0: until `msgq resume`."""
        await self.redis.set(PAUSE_KEY, reason, ex=seconds or None)  # Redis refuses ex=0

    async def resume(self) -> bool:
        return bool(await self.redis.delete(PAUSE_KEY))

    async def paused(self) -> str | None:
        value = await self.redis.get(PAUSE_KEY)
        return None if value is None else value.decode()


def headers_say_limits(headers: dict[str, str] | None) -> bool:
    return any(name.startswith("anthropic-ratelimit-") for name in headers or {})


def _int_header(headers: dict[str, str] | None, name: str) -> str:
    value = (headers or {}).get(name, "")
    return value if value.isdigit() else ""
