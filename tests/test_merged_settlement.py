"""Every job's ending corrects the fleet's bucket (ADJUST) and counts its spend (RECORD_SPEND) on
the one fleet-wide slot; a worker's group commit merges a batch's endings into one script call
each (`msgq.group_commit`). Merged, they must leave exactly what the calls one by one leave.
Against the real Redis."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from msgq.group_commit import GroupCommit
from msgq.tenancy.budgets import MICRO, Budgets, periods
from msgq.tenancy.tenants import TenantConfig
from tests.conftest import KEYS
from worker.ledger import Ledgers
from worker.ratelimit import Limits, RateLimiter
from worker.ratelimit_scripts import ADJUST

MODEL = "claude-haiku-4-5"
LIMITS = {"default": Limits(rpm=100, itpm=10_000, otpm=5_000)}
# Each ending: (input delta, output delta, requests refunded, headers, admitted count)
ENDINGS = [
    (50, 20, 0, {}, 1),
    (-30, 5, 0, {"anthropic-ratelimit-requests-limit": "80"}, 2),
    (0, 0, 1, {}, None),
    (10, -40, 0, {"anthropic-ratelimit-requests-remaining": "70"}, 3),
    (100, 100, 0, {"anthropic-ratelimit-output-tokens-remaining": "4000"}, 4),
]


async def _bucket_after(redis: Redis, scope: str, group: GroupCommit | None) -> dict[str, str]:
    limiter = RateLimiter(redis, KEYS, LIMITS, scope=scope)
    for _ in range(5):
        admitted = await limiter.acquire(
            MODEL, input_tokens=200, output_tokens=100, now_ms=int(time.time() * 1000)
        )
        assert admitted.admitted
    settles = [
        limiter.settle(
            MODEL,
            input_delta=i,
            output_delta=o,
            requests=r,
            headers=h,
            admitted_n=n,
            group=group,
        )
        for i, o, r, h, n in ENDINGS
    ]
    if group is None:
        for settle in settles:  # one by one, each its own script call
            await settle
    else:
        await asyncio.gather(*settles)
    raw = await redis.hgetall(KEYS.bucket_key(f"haiku:{scope}"))  # type: ignore[misc]
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    return {f: fields[f] for f in ("r", "i", "o", "R", "n") if f in fields}


async def test_merged_bucket_corrections_leave_what_one_by_one_leaves(redis: Redis) -> None:
    group = GroupCommit(redis)
    one_by_one = await _bucket_after(redis, "apart", None)
    merged = await _bucket_after(redis, "merged", group)
    assert group.sent < group.calls  # the five endings went as fewer script calls
    # Levels refill between the two runs (ms apart): compared to well under one ending
    for field in ("i", "o"):
        assert abs(float(merged[field]) - float(one_by_one[field])) < 5.0
    assert {f: merged[f] for f in ("R", "n")} == {f: one_by_one[f] for f in ("R", "n")}
    assert abs(float(merged["r"]) - float(one_by_one["r"])) < 0.5


async def test_a_bucket_correction_with_arguments_missing_is_refused(redis: Redis) -> None:
    adjust = redis.register_script(ADJUST)
    with pytest.raises(ResponseError, match="15 a call"):
        await adjust(keys=[KEYS.bucket_key("haiku:short")], args=[1] * 14)


async def test_merged_spend_counts_each_job_once_by_model(redis: Redis) -> None:
    ledgers = Ledgers(redis, RateLimiter(redis, KEYS, {}), GroupCommit(redis))
    costs = [(0.25, "claude-haiku-4-5"), (1.5, "claude-sonnet-4-5")] * 10
    await asyncio.gather(*(ledgers.record_spend("merged-t", usd, m) for usd, m in costs))
    assert ledgers.group.sent < ledgers.group.calls
    await Budgets(redis, KEYS).record("merged-t", 0.5, "claude-haiku-4-5")  # on its own too
    usage = await Budgets(redis, KEYS).usage("merged-t", TenantConfig())
    assert usage["spent_today_usd"] == usage["spent_month_usd"] == 18.0
    day, _ = periods()
    by_model = await redis.hgetall(KEYS.spend_models_key("merged-t", day))  # type: ignore[misc]
    assert {k.decode(): int(v) for k, v in by_model.items()} == {
        "claude-haiku-4-5": 3 * MICRO,
        "claude-sonnet-4-5": 15 * MICRO,
    }
    assert await redis.sismember(KEYS.spend_tenants, "merged-t")  # type: ignore[misc]
