"""A lease one worker of the fleet holds at a time (the dispatcher, the reconciler, the batch
lane's manager): taken when free, renewed by its holder, taken over once it lapses."""

from __future__ import annotations

import secrets

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

    async def hold(self, ttl_ms: int) -> bool:
        """True while this process holds the lease (for `ttl_ms` more)."""
        return bool(await self._take(keys=[self.key], args=[self.token, ttl_ms]))

    async def release(self) -> None:
        """Give the lease up (a worker stopping): the next holder takes it at once rather than
        after its TTL (10 s for the dispatcher, during which a rolling restart admitted nothing)."""
        await self._release(keys=[self.key], args=[self.token])
