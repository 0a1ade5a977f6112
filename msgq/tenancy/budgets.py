"""Per-tenant budgets in USD per day and per month: reserved at admission, settled from usage.

The check and the reservation are one Lua script, so any number of workers racing for the last
dollars of a budget can never take a tenant past it. Amounts are integer micro-dollars in Redis
(no float drift). A reservation is deliberately conservative (input at twice its price, which
covers cache writes, and the whole `max_tokens` of output); the settlement returns what was not
spent. Periods are UTC days and months.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from msgq.keys import Keyspace
from msgq.ledger import APPLIED_TTL_S, BUDGET, DROP_IF, HOLD, REPLACE_IF
from msgq.tenancy.tenants import TenantConfig
from schemas import Prices

MICRO = 1_000_000
# Where the spend of jobs submitted without a tenant is counted: not a valid tenant name
# (TENANT_PATTERN), so no tenant can share it. Reports show it as a row of its own.
NO_TENANT = "(none)"
DAY_TTL_S = 40 * 24 * 3600
MONTH_TTL_S = 400 * 24 * 3600
# Spend without a reservation, in one step. KEYS: the day's and the month's spend, the day's
# spend by model (all under the tenant's tag). ARGV: one or more calls' arguments (the tenant's
# spend on those keys, 5 each): µUSD, day ttl s, month ttl s, model, tenant. Summed first, so a
# worker's group commit merges every job's spend of a batch into one call
# (`msgq.group_commit`): each counter is written once, each model's once. The tenant is listed
# in the deployment's set apart (`Budgets.listed`): another slot.
RECORD_SPEND = """
if #ARGV == 0 or #ARGV % 5 ~= 0 then
  return redis.error_reply('RECORD_SPEND takes its arguments 5 a call, not ' .. #ARGV)
end
local total, by_model, models = 0, {}, {}
for base = 0, #ARGV - 5, 5 do
  local amount, model = tonumber(ARGV[base + 1]), ARGV[base + 4]
  total = total + amount
  if not by_model[model] then models[#models + 1] = model end
  by_model[model] = (by_model[model] or 0) + amount
end
redis.call('INCRBY', KEYS[1], total)
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('INCRBY', KEYS[2], total)
redis.call('EXPIRE', KEYS[2], ARGV[3])
for _, model in ipairs(models) do redis.call('HINCRBY', KEYS[3], model, by_model[model]) end
redis.call('EXPIRE', KEYS[3], ARGV[2])
return 1
"""

# KEYS: day, month[, the nonce's marker of a reservation held in a job's ledger]. ARGV: amount
# µUSD, day cap (-1: none), month cap, day ttl, month ttl[, marker ttl]. Returns {1, ''}
# reserved (the marker set: the ledger's pending hold is real; a retry finds it set and takes
# nothing again), {0, 'void', 0, 0} when the hold was given up meanwhile (a lost run's,
# `worker.ledger`), or {0, 'day'|'month', spent, cap} when it would pass the cap.
RESERVE = """
if #KEYS == 3 then
  local marker = redis.call('GET', KEYS[3])
  if marker == 'void' then return {0, 'void', 0, 0} end
  if marker then return {1, ''} end
end
local amount = tonumber(ARGV[1])
local caps = {tonumber(ARGV[2]), tonumber(ARGV[3])}
local names = {'day', 'month'}
for n = 1, 2 do
  local spent = tonumber(redis.call('GET', KEYS[n]) or '0')
  if caps[n] >= 0 and spent + amount > caps[n] then return {0, names[n], spent, caps[n]} end
end
redis.call('INCRBY', KEYS[1], amount)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('INCRBY', KEYS[2], amount)
redis.call('EXPIRE', KEYS[2], ARGV[5])
if #KEYS == 3 then redis.call('SET', KEYS[3], '1', 'EX', ARGV[6]) end
return {1, ''}
"""


def periods(now: datetime | None = None) -> tuple[str, str]:
    now = now or datetime.now(UTC)
    return now.strftime("d%Y%m%d"), now.strftime("m%Y%m")


def reserve_usd(prices: Prices | None, input_tokens: int, max_tokens: int) -> float:
    """What admission reserves: never less than the call can cost (0 without a known price)."""
    if prices is None:
        return 0.0
    return (input_tokens * 2 * prices.input + max_tokens * prices.output) / 1_000_000


class BudgetRefusal(str):
    """The period ("day"/"month") whose budget a reservation would pass, carrying the figures.

    A str, so callers that name the period keep working; `budget_message` says what did not
    fit. Without the figures, "has reached its day budget" read as false while money was left:
    it is the reservation (all of `max_tokens`) that did not fit what remained.
    """

    reservation_usd: float
    spent_usd: float
    budget_usd: float

    def __new__(
        cls, period: str, *, reservation_usd: float, spent_usd: float, budget_usd: float
    ) -> BudgetRefusal:
        refusal = super().__new__(cls, period)
        refusal.reservation_usd = reservation_usd
        refusal.spent_usd = spent_usd
        refusal.budget_usd = budget_usd
        return refusal


def budget_message(tenant: str | None, period: str) -> str:
    """The budget_exceeded error: reservation, remaining and budget when known."""
    if not isinstance(period, BudgetRefusal):
        return f"tenant {tenant!r} has reached its {period} budget"
    remaining = max(0.0, period.budget_usd - period.spent_usd)
    return (
        f"tenant {tenant!r}: this job reserves ${period.reservation_usd:.6f} (input at twice its "
        f"price plus all of max_tokens as output), more than the ${remaining:.6f} left of its "
        f"{period} budget of ${period.budget_usd:.2f}; a smaller max_tokens may fit"
    )


@dataclass(frozen=True)
class Reservation:
    tenant: str
    day: str
    month: str
    micro_usd: int


class Budgets:
    def __init__(self, redis: Redis, keys: Keyspace) -> None:
        self.redis, self.keys = redis, keys
        self._reserve = redis.register_script(RESERVE)
        self._hold = redis.register_script(HOLD)
        self._replace = redis.register_script(REPLACE_IF)
        self._drop = redis.register_script(DROP_IF)
        self.record_script = redis.register_script(RECORD_SPEND)  # a worker's group commit runs it
        self._listed: set[tuple[str, str]] = set()  # (tenant, day) already in spend_tenants

    async def reserve(
        self,
        tenant: str,
        config: TenantConfig,
        usd: float,
        now: datetime | None = None,
        *,
        hold: str | None = None,
    ) -> Reservation | BudgetRefusal:
        """A Reservation, or the period ("day"/"month") whose budget it would pass. `hold`: a
        job ID whose ledger (msgq.ledger) holds the reservation.

        Held, it is three steps, each in one slot (the ledger is in the job's partition, the spend
        in the deployment's slot, or on a cluster its tenant's spend tag): the hold written
        `pending` with a nonce, the spend reserved with the nonce's marker, then the hold made
        plain (or dropped if refused). A run lost between them leaves a pending hold that the
        marker decides: reserved, it is settled as any hold; not, it is dropped
        (`worker.ledger.Ledgers.settle`)."""
        day, month = periods(now)
        amount = round(usd * MICRO)
        caps = [
            -1 if limit is None else round(limit * MICRO)
            for limit in (config.budget_usd_day, config.budget_usd_month)
        ]
        keys = [self.keys.spend_key(tenant, day), self.keys.spend_key(tenant, month)]
        args: list[Any] = [amount, *caps, DAY_TTL_S, MONTH_TTL_S]
        held: dict[str, Any] = {"tenant": tenant, "day": day, "month": month, "micro_usd": amount}
        ledger: list[str] = []
        pending = b""
        if hold is not None:
            nonce = uuid.uuid4().hex
            ledger = [self.keys.ledger_key(hold), self.keys.for_job(hold).ledger_open]
            pending = orjson.dumps({**held, "pending": nonce})
            await self._hold(keys=ledger, args=[hold, int(time.time() * 1000), BUDGET, pending])
            keys.append(self.keys.spend_applied_key(tenant, nonce))
            args.append(APPLIED_TTL_S)
        ok, period, *figures = await self._reserve(keys=keys, args=args)
        if hold is not None:
            if int(ok):  # the pending hold made plain, unless a settler took it meanwhile
                await self._replace(keys=ledger[:1], args=[BUDGET, pending, orjson.dumps(held)])
            else:
                await self._drop(keys=ledger, args=[hold, BUDGET, pending])
        if not int(ok):
            spent, cap = (int(f) for f in figures)
            return BudgetRefusal(
                period.decode() if isinstance(period, bytes) else str(period),
                reservation_usd=amount / MICRO,
                spent_usd=spent / MICRO,
                budget_usd=cap / MICRO,
            )
        await self.listed(tenant, day)
        return Reservation(tenant, day, month, amount)

    async def settle(self, reservation: Reservation, actual_usd: float, model: str) -> None:
        """Replace the reservation by what the call cost (0 when nothing was produced)."""
        actual = round(actual_usd * MICRO)
        delta = actual - reservation.micro_usd
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incrby(self.keys.spend_key(reservation.tenant, reservation.day), delta)
            pipe.incrby(self.keys.spend_key(reservation.tenant, reservation.month), delta)
            if actual:
                models = self.keys.spend_models_key(reservation.tenant, reservation.day)
                pipe.hincrby(models, model, actual)
                pipe.expire(models, DAY_TTL_S)
            await pipe.execute()

    async def record(self, tenant: str | None, actual_usd: float, model: str) -> None:
        """Spend without a reservation (a tenant with no budget, or no tenant at all): still
        counted for usage, so the reports add up to what the records cost."""
        keys, args = self.record_step(tenant, actual_usd, model)
        await self.record_script(keys=keys, args=args)
        await self.listed(tenant or NO_TENANT, periods()[0])

    async def listed(self, tenant: str, day: str) -> None:
        """The tenant in the set of tenants with spend (usage reports read it): once a day a
        process, not once a job (the set is the deployment's slot, the spend the tenant's)."""
        if (tenant, day) not in self._listed:
            await self.redis.sadd(self.keys.spend_tenants, tenant)  # type: ignore[misc]
            if len(self._listed) >= 10_000:  # a long-lived worker's: days gone by
                self._listed.clear()
            self._listed.add((tenant, day))

    def record_step(
        self, tenant: str | None, actual_usd: float, model: str
    ) -> tuple[list[str], list[Any]]:
        """`record`'s RECORD_SPEND keys and arguments (for a worker's group commit)."""
        tenant = tenant or NO_TENANT
        day, month = periods()
        ks = self.keys
        keys = [
            ks.spend_key(tenant, day),
            ks.spend_key(tenant, month),
            ks.spend_models_key(tenant, day),
        ]
        return keys, [round(actual_usd * MICRO), DAY_TTL_S, MONTH_TTL_S, model, tenant]

    async def usage(self, tenant: str, config: TenantConfig) -> dict[str, object]:
        """Spend today and this month, the budgets and what remains (USD)."""
        day, month = periods()
        spent_day, spent_month = await self.redis.mget(
            [self.keys.spend_key(tenant, day), self.keys.spend_key(tenant, month)]
        )
        models = await self.redis.hgetall(self.keys.spend_models_key(tenant, day))  # type: ignore[misc]
        today = int(spent_day or 0) / MICRO
        this_month = int(spent_month or 0) / MICRO
        return {
            "tenant": None if tenant == NO_TENANT else tenant,
            "day": day[1:],
            "spent_today_usd": round(today, 6),
            "spent_month_usd": round(this_month, 6),
            "budget_usd_day": config.budget_usd_day,
            "budget_usd_month": config.budget_usd_month,
            "remaining_today_usd": None
            if config.budget_usd_day is None
            else round(max(0.0, config.budget_usd_day - today), 6),
            "remaining_month_usd": None
            if config.budget_usd_month is None
            else round(max(0.0, config.budget_usd_month - this_month), 6),
            "by_model_today_usd": {
                k.decode(): round(int(v) / MICRO, 6) for k, v in sorted(models.items())
            },
            "on_budget": config.on_budget,
        }

    async def tenants(self) -> list[str]:
        members = await self.redis.smembers(self.keys.spend_tenants)  # type: ignore[misc]
        return sorted(m.decode() for m in members)
