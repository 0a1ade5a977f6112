"""On a Redis Cluster, a tenant's spend moved under the tenant's own hash tag
(`msgq.spend_keys`): the counters that an earlier release kept on the deployment's slot are
carried over when a worker starts, so no budget starts the day or the month again at zero.

Only the current day's and month's counters and the day's spend by model are moved: budgets
and usage read nothing older. On one node the names did not change and nothing is done. Once
done, `spend:moved` says so and later starts skip it. Stop the earlier release's processes
before starting this one: one still running would go on counting under the old names.
A budget step a crash left half done across the upgrade (a `pending` hold, a `settling` entry)
finds no marker under the new names: it is settled as if its spend step had not run, which
can only count more than was spent (the budget runs out sooner), never less.

Each counter is taken by a RENAME to a name of this process's own, in the same slot, so of
several workers starting at once exactly one moves it; then added to the tenant's counter and
the taken copy deleted. A process killed between the two leaves its taken copy behind
(`spend-moving:` in the deployment's slot), not counted: the one window in which spend is lost."""

from __future__ import annotations

import uuid
from datetime import datetime

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from msgq.keys import Keyspace
from msgq.tenancy.budgets import DAY_TTL_S, MONTH_TTL_S, periods

log = structlog.get_logger("msgq.worker")


async def move_spend_to_tenant_tags(
    redis: Redis, keys: Keyspace, now: datetime | None = None
) -> int:
    """Carry the current periods' spend from the deployment's slot to each tenant's; how many
    keys were moved."""
    if not keys.clustered or await redis.exists(keys.spend_moved):
        return 0
    old_prefix, mine = keys.root.prefix + "spend:", uuid.uuid4().hex
    day, month = periods(now)
    moved = 0
    for raw in await redis.smembers(keys.spend_tenants):  # type: ignore[misc]
        tenant = raw.decode()
        for period, ttl in ((day, DAY_TTL_S), (month, MONTH_TTL_S), (f"{day}:models", DAY_TTL_S)):
            old = f"{old_prefix}{tenant}:{period}"
            taken = f"{keys.root.prefix}spend-moving:{mine}:{tenant}:{period}"
            try:
                await redis.rename(old, taken)  # one process takes it, the others find none
            except ResponseError:
                continue  # no such key: never written there, or moved already
            new = f"{keys.tenant_prefix(tenant)}spend:{tenant}:{period}"
            if period.endswith(":models"):
                by_model = await redis.hgetall(taken)  # type: ignore[misc]
                for model, usd in by_model.items():
                    await redis.hincrby(new, model.decode(), int(usd))  # type: ignore[misc]
            else:
                await redis.incrby(new, int(await redis.get(taken) or 0))
            await redis.expire(new, ttl)
            await redis.delete(taken)
            moved += 1
    await redis.set(keys.spend_moved, "1")
    if moved:
        log.info("spend.moved_to_tenant_tags", keys=moved)
    return moved
