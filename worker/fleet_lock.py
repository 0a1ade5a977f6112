"""A lease one worker of the fleet holds at a time (the dispatcher, the reconciler, the batch
lane's manager): taken when free, renewed by its holder, taken over once it lapses."""

from __future__ import annotations

import secrets
import time

from redis.asyncio import Redis

# KEYS: lock. ARGV: token, ttl ms. 1 when we hold it (taken now, or renewed).
TAKE_LOCK = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


# KEYS: lock. ARGV: token. Deletes the lease only if this holder still has it.
RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class FleetLock:
    def __init__(self, redis: Redis, key: str) -> None:
        self.key = key
        self.token = secrets.token_hex(8)
        self._take = redis.register_script(TAKE_LOCK)
        self._release = redis.register_script(RELEASE_LOCK)
        self._renewed_at = -float("inf")  # monotonic time of the last renewal that held

    async def hold(self, ttl_ms: int, *, renew_after_s: float = 0.0) -> bool:
        """True while this process holds the lease (for `ttl_ms` more). Within `renew_after_s`
        of a renewal that held, True without asking Redis: the dispatcher asks before every
        tick (20 a second under load), and nobody else can take a lease with most of its TTL
        left. `renew_after_s` must stay well under the TTL. One exception: a failover that
        loses the lease's key (replication is asynchronous) lets another worker take it, and
        this one learns of it up to `renew_after_s` later; two dispatchers for that long admit
        through the same atomic steps, so nothing is lost or sent twice."""
        now = time.monotonic()
        if now - self._renewed_at < renew_after_s:
            return True
        held = bool(await self._take(keys=[self.key], args=[self.token, ttl_ms]))
        self._renewed_at = now if held else -float("inf")
        return held

    async def release(self) -> None:
        """Give the lease up (a worker stopping): the next holder takes it at once rather than
        after its TTL (10 s for the dispatcher, during which a rolling restart admitted nothing)."""
        self._renewed_at = -float("inf")
        await self._release(keys=[self.key], args=[self.token])
