"""A budget's steps split over two slots (partitions on a Redis Cluster, `msgq.ledger`): each is
safe to repeat, and money moves once. Against the real Redis: a retried take, a retried
reservation, a hold given up while its reservation was in flight, a settlement finished by
another caller, and the audit agreeing at every point."""

from __future__ import annotations

import orjson
from redis.asyncio import Redis

from msgq.ledger import TAKE_BUDGET, budget_mismatches
from msgq.tenancy.budgets import MICRO, Budgets, periods
from msgq.tenancy.tenants import TenantConfig
from tests.conftest import KEYS
from worker.ledger import CUT, Ledgers, Outcome
from worker.ratelimit import RateLimiter

CAPPED = TenantConfig(budget_usd_day=10.0)


async def spent(redis: Redis, tenant: str) -> int:
    return int(await redis.get(KEYS.spend_key(tenant, periods()[0])) or 0)


async def test_a_retried_take_is_still_the_winner_and_a_rival_is_not(redis: Redis) -> None:
    """A take whose reply was lost is sent again with the same entry: it must still win (else
    the run records its cost a second time as spend without a budget), and another entry loses."""
    ledger = KEYS.ledger_key("job-take")
    await redis.hset(ledger, "budget", "held")  # type: ignore[misc]
    take = redis.register_script(TAKE_BUDGET)
    assert await take(keys=[ledger], args=["budget", "held", "entry-1"]) == 1
    assert await take(keys=[ledger], args=["budget", "held", "entry-1"]) == 1  # the retry
    assert await take(keys=[ledger], args=["budget", "held", "entry-2"]) == 0  # a rival


async def test_a_retried_reservation_charges_once_and_a_given_up_hold_charges_nothing(
    redis: Redis,
) -> None:
    """The reservation of a held budget is keyed by its nonce: sent twice it takes once. A
    pending hold whose run was lost before it reserved is given up (its nonce voided), and a
    reservation still in flight for it is then refused rather than charged with no hold."""
    budgets = Budgets(redis, KEYS)
    await budgets.reserve("acme", CAPPED, 1.0, hold="job-a")
    assert await spent(redis, "acme") == MICRO
    raw = await redis.hget(KEYS.ledger_key("job-a"), "budget")  # type: ignore[misc]
    assert orjson.loads(raw)["micro_usd"] == MICRO and b"pending" not in raw  # made plain
    # The same reservation sent again (its reply lost): the marker says it was made.
    day, month = periods()
    nonce = "n-retried"
    marker = KEYS.spend_applied_key("acme", nonce)
    reserve = budgets._reserve
    keys = [KEYS.spend_key("acme", day), KEYS.spend_key("acme", month), marker]
    args = [MICRO, 10 * MICRO, -1, 3600, 3600, 3600]
    assert (await reserve(keys=keys, args=args))[0] == 1
    assert (await reserve(keys=keys, args=args))[0] == 1
    assert await spent(redis, "acme") == 2 * MICRO  # once for the first hold, once here
    # A lost run's pending hold: the settler voids its nonce and drops it; a late reservation
    # for that nonce is refused.
    pending = {"tenant": "acme", "day": day, "month": month, "micro_usd": MICRO}
    lost = orjson.dumps({**pending, "pending": "n-lost"})
    part = KEYS.for_job("job-lost")
    await redis.hset(part.ledger_key("job-lost"), "budget", lost)  # type: ignore[misc]
    await redis.zadd(part.ledger_open, {"job-lost": 1})
    ledgers = Ledgers(redis, RateLimiter(redis, KEYS, {}))
    settled = await ledgers.settle("job-lost", CUT, model="claude-haiku-4-5")
    assert not settled.budget
    assert not await redis.exists(part.ledger_key("job-lost"))
    late = [keys[0], keys[1], KEYS.spend_applied_key("acme", "n-lost")]
    assert (await reserve(keys=late, args=args))[1] in (b"void", "void")
    assert await spent(redis, "acme") == 2 * MICRO


async def test_a_settlement_left_half_done_is_finished_once(redis: Redis) -> None:
    """A run taken away after its take (the `settling:` entry kept, the spend not applied):
    the next caller applies it once and closes it; a second caller finds nothing; the audit is
    clean before, between and after."""
    budgets = Budgets(redis, KEYS)
    await budgets.reserve("acme", CAPPED, 1.0, hold="job-half")
    ledgers = Ledgers(redis, RateLimiter(redis, KEYS, {}))
    raw = await redis.hget(KEYS.ledger_key("job-half"), "budget")  # type: ignore[misc]
    hold = orjson.loads(raw)
    entry = {
        **hold,
        "delta": 300_000 - MICRO,
        "cost": 300_000,
        "model": "claude-haiku-4-5",
        "nonce": "n-half",
        "field": "budget",
        "held": raw.decode(),
    }
    take = redis.register_script(TAKE_BUDGET)
    assert await take(keys=[KEYS.ledger_key("job-half")], args=["budget", raw, orjson.dumps(entry)])
    day = periods()[0]
    assert await budget_mismatches(redis, KEYS, day) == []  # the reservation still counts
    assert not (await ledgers.settle("job-half", CUT, model="x")).budget  # another run's cost
    assert await spent(redis, "acme") == 300_000
    assert await budget_mismatches(redis, KEYS, day) == []
    again = await ledgers.settle("job-half", Outcome(sent=True, cost_usd=9.0), model="x")
    assert not again.budget and await spent(redis, "acme") == 300_000  # applied once
