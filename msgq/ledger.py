"""A job's ledger: every reservation it holds, in Redis with the job, until it is settled once.

`HASH msgq:ledger:<job id>` has one field per reservation:

- `ticket`: the dispatcher's ticket, moved here from `msgq:admitted:<id>` in the same step as the
  job takes it to send (`CONSUME`): capacity in the fleet's bucket (`limited`, `estimate`), in
  the tenant's share-cap bucket (`share`), and the tenant's budget (`micro_usd`, `day`, ...);
- `budget`: the worker's own budget reservation, for a job sent without a ticket (written by
  the reserving script itself, `Budgets.reserve(..., hold=...)`);
- `rate`: the worker's own capacity in the fleet's bucket.

`ZSET msgq:ledger:open` lists the jobs with open reservations (for the reconciler and the
audit). Taking a field (`TAKE_CAPACITY`, or the budget's compare-and-settle) decides who
settles it: one caller, once, whatever the ending (an answer, a failure, a cancel, a shutdown
cut, a lost worker found at the next run or by the reconciler).

The invariant `msgq audit` checks: a tenant's spend counter for today equals what its jobs cost
today (`spend:models` for the day) plus every budget reservation still open for today (ledgers,
tickets not yet taken, and the batch lane's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from msgq.keys import Keyspace

TICKET, BUDGET, RATE = "ticket", "budget", "rate"

# KEYS: ticket, tickets ZSET, ledger, open ZSET. ARGV: job id, now ms. The ticket's JSON when
# this call moved it into the ledger; nil when there was none or another run took it first.
CONSUME = """
local ticket = redis.call('GET', KEYS[1])
if not ticket then return false end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], 'ticket', ticket)
redis.call('ZADD', KEYS[4], 'NX', ARGV[2], ARGV[1])
return ticket
"""

# KEYS: ledger, open ZSET. ARGV: job id, now ms, field, value.
HOLD = """
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[1])
return 1
"""

# KEYS: ledger, open ZSET. ARGV: job id. Takes every field that holds no budget reservation and
# returns {field, value, taken (1/0), ...}: a field with a budget (`micro_usd`) is returned
# untaken, for SETTLE_BUDGET to take and settle in one step. One round trip for a job whose
# ledger holds only capacity.
TAKE_CAPACITY = """
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local taken = 0
  if not string.find(all[i + 1], '"micro_usd"', 1, true) then
    redis.call('HDEL', KEYS[1], all[i])
    taken = 1
  end
  out[#out + 1] = all[i]
  out[#out + 1] = all[i + 1]
  out[#out + 1] = taken
end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[1]) end
return out
"""

# A budget reservation is settled in three steps, each atomic in one slot: the ledger is in the
# job's partition, the spend counters in the deployment's own slot, and on a Redis Cluster no
# step may touch both. Each is safe to repeat, and the nonce makes the spend change apply once:
# 1. TAKE_BUDGET (the ledger): the field is taken, only if unchanged (one caller wins), and
#    kept as `settling:<field>` with what the settlement will apply and its nonce;
# 2. APPLY_SPEND (the spend): applied only if its nonce's marker is new;
# 3. CLOSE_FIELD (the ledger): the `settling:` field dropped (its capacity settled by whoever
#    dropped it). A crash between leaves the `settling:` field, which the job's next run or the
#    reconciler finishes (`worker.ledger.Ledgers.settle`).
SETTLING = "settling:"
# KEYS: ledger. ARGV: field, the field's value as read, the settling entry's JSON. 1 when this
# call's entry is the one kept (a retry whose first reply was lost included).
TAKE_BUDGET = """
if redis.call('HGET', KEYS[1], 'settling:' .. ARGV[1]) == ARGV[3] then return 1 end
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], 'settling:' .. ARGV[1], ARGV[3])
return 1
"""
# KEYS: day, month, models-of-the-day, the nonce's marker. ARGV: delta µUSD (cost - reserved),
# cost µUSD, model, models ttl s, marker ttl s. 1 applied now, 0 applied before.
APPLY_SPEND = """
if not redis.call('SET', KEYS[4], '1', 'NX', 'EX', ARGV[5]) then return 0 end
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('INCRBY', KEYS[2], ARGV[1])
if tonumber(ARGV[2]) > 0 then
  redis.call('HINCRBY', KEYS[3], ARGV[3], ARGV[2])
  redis.call('EXPIRE', KEYS[3], ARGV[4])
end
return 1
"""
# KEYS: ledger, open ZSET. ARGV: job id, field. 1 when this call dropped the field.
CLOSE_FIELD = """
local dropped = redis.call('HDEL', KEYS[1], ARGV[2])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[1]) end
return dropped
"""
# KEYS: ledger, open ZSET. ARGV: job id, field, its value as read. Dropped only if unchanged.
DROP_IF = """
if redis.call('HGET', KEYS[1], ARGV[2]) ~= ARGV[3] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[2])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[1]) end
return 1
"""
# KEYS: ledger. ARGV: field, the value it must still hold, the new value. 1 when replaced.
REPLACE_IF = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""
APPLIED_TTL_S = 8 * 24 * 3600  # a nonce's marker outlives any settlement left half done


@dataclass(frozen=True)
class BudgetHold:
    """A budget reservation as a ledger (or ticket) holds it."""

    tenant: str
    day: str
    month: str
    micro_usd: int

    @classmethod
    def of(cls, data: dict[str, Any]) -> BudgetHold | None:
        if "micro_usd" not in data or "tenant" not in data:
            return None
        return cls(
            str(data["tenant"]), str(data["day"]), str(data["month"]), int(data["micro_usd"])
        )

    def as_fields(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "day": self.day,
            "month": self.month,
            "micro_usd": self.micro_usd,
        }


async def open_budget_micro_usd(redis: Redis, keys: Keyspace, day: str) -> dict[str, int]:
    """Per tenant, the budget reservations still open for `day`: in ledgers, in tickets not yet
    taken, and in the batch lane (µUSD). A hold still `pending` counts once its reservation was
    made (its nonce's marker); a settlement left half done until its spend was applied."""
    held: list[dict[str, Any]] = []
    for part in keys.parts:  # each partition lists its own open ledgers and tickets
        for raw_id in await redis.zrange(part.ledger_open, 0, -1):
            fields = await redis.hgetall(part.ledger_key(raw_id.decode()))  # type: ignore[misc]  # stubs
            for name, value in fields.items():
                field, data = name.decode(), _loads(value)
                tenant = str(data.get("tenant"))
                if field.startswith(SETTLING):
                    marker = keys.spend_applied_key(tenant, str(data.get("nonce")))
                    held += [] if await redis.exists(marker) else [data]
                elif field in (TICKET, BUDGET):
                    nonce = data.get("pending")  # reserved once its marker says so, not `void`
                    marker = keys.spend_applied_key(tenant, str(nonce))
                    if not nonce or await redis.get(marker) == b"1":
                        held.append(data)
        for raw_id in await redis.zrange(part.tickets_key, 0, -1):
            held.append(_loads(await redis.get(part.admitted_key(raw_id.decode()))))
    held += [_loads(v) for v in (await redis.hgetall(keys.lane_budgets)).values()]  # type: ignore[misc]
    open_: dict[str, int] = {}
    for data in held:
        hold = BudgetHold.of(data)
        if hold is not None and hold.day == day:
            open_[hold.tenant] = open_.get(hold.tenant, 0) + hold.micro_usd
    return open_


async def budget_mismatches(redis: Redis, keys: Keyspace, day: str) -> list[tuple[str, int, int]]:
    """(tenant, spend counter, cost + open reservations) for each tenant whose counter for
    `day` is not what its jobs cost plus what is still reserved (µUSD)."""
    open_ = await open_budget_micro_usd(redis, keys, day)
    found = []
    for raw in await redis.smembers(keys.spend_tenants):  # type: ignore[misc]  # redis-py stubs
        tenant = raw.decode()
        counter = int(await redis.get(keys.spend_key(tenant, day)) or 0)
        models = await redis.hgetall(keys.spend_models_key(tenant, day))  # type: ignore[misc]
        expected = sum(int(v) for v in models.values()) + open_.get(tenant, 0)
        if counter != expected:
            found.append((tenant, counter, expected))
    return found


def _loads(raw: bytes | None) -> dict[str, Any]:
    try:
        data = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}
