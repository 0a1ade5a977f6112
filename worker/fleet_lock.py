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
        self._renewed_at: float | None = None  # monotonic, when a renewal last succeeded
        self._renewed_ttl_ms = 0

    async def hold(self, ttl_ms: int) -> bool:
        """True while this process holds the lease (for at least two thirds of `ttl_ms` more).
        Renewed in Redis once a third of its life has passed, not on every call: an idle
        dispatcher asked each second, a round trip each time for a 10 s lease."""
        renewed = self._renewed_at
        if (
            renewed is not None
            and ttl_ms == self._renewed_ttl_ms
            and time.monotonic() - renewed < ttl_ms / 3000
        ):
            return True
        before = time.monotonic()
        held = bool(await self._take(keys=[self.key], args=[self.token, ttl_ms]))
        self._renewed_at, self._renewed_ttl_ms = (before, ttl_ms) if held else (None, 0)
        return held

    async def release(self) -> None:
        """Give the lease up (a worker stopping): the next holder takes it at once rather than
        after its TTL (10 s for the dispatcher, during which a rolling restart admitted nothing)."""
        self._renewed_at = None
        await self._release(keys=[self.key], args=[self.token])
