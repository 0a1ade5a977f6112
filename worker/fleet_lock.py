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


class FleetLock:
    def __init__(self, redis: Redis, key: str) -> None:
        self.key = key
        self.token = secrets.token_hex(8)
        self._take = redis.register_script(TAKE_LOCK)

    async def hold(self, ttl_ms: int) -> bool:
        """True while this process holds the lease (for `ttl_ms` more)."""
        return bool(await self._take(keys=[self.key], args=[self.token, ttl_ms]))
