"""The tenants file: parsed and validated at start-up with one clear line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from msgq.settings import Settings
from msgq.tenancy.tenants import TenantsFileError, parse_tenants
from schemas import Lane, Priority

GOOD = """
[tenants.acme]
weight = 2
default_priority = "interactive"
budget_usd_day = 1.5
on_budget = "fail"
batches_lane = "batch"
otpm_share = 0.5
"""


def test_a_good_file_and_defaults_for_unlisted_tenants() -> None:
    tenants = parse_tenants(GOOD)
    acme = tenants.get("acme")
    assert (acme.weight, acme.default_priority, acme.on_budget) == (2, Priority.INTERACTIVE, "fail")
    assert acme.batches_lane is Lane.BATCH and acme.has_budget and acme.otpm_share == 0.5
    other = tenants.get("someone-else")
    assert other.weight == 1 and not other.has_budget and other.default_priority is Priority.DEFAULT


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[tenants.acme]\nweight = -1\n", "tenants.acme.weight"),
        ('[tenants.acme]\non_budget = "later"\n', "tenants.acme.on_budget"),
        ("[tenants.acme]\nwieght = 2\n", "tenants.acme.wieght"),
        ('[tenants."bad name"]\nweight = 1\n', "tenant name"),
        ("[acme]\nweight = 1\n", "unknown table"),
        ("[tenants.acme\n", "not valid TOML"),
    ],
)
def test_bad_files_name_the_tenant_and_field(text: str, says: str) -> None:
    with pytest.raises(TenantsFileError, match="MSGQ_TENANTS_FILE") as caught:
        parse_tenants(text)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_settings_refuse_a_bad_tenants_file_at_start_up(tmp_path: Path) -> None:
    bad = tmp_path / "tenants.toml"
    bad.write_text("[tenants.acme]\nweight = 0\n")
    with pytest.raises(ValidationError, match=r"tenants\.acme\.weight"):
        Settings(_env_file=None, tenants_file=bad)  # type: ignore[call-arg]


async def test_spend_an_earlier_release_kept_on_the_deployments_slot_is_carried_over(
    redis: Redis, settings: Settings
) -> None:
    """On a cluster a tenant's spend moved under the tenant's own tag: what an earlier release
    counted today and this month on the deployment's slot is carried over once when a worker
    starts, so no budget starts again at zero. On one node the names never changed."""
    from msgq.tenancy.budgets import MICRO, Budgets, periods
    from msgq.tenancy.spend_moves import move_spend_to_tenant_tags
    from msgq.tenancy.tenants import TenantConfig

    keys = settings.keys
    day, month = periods()
    old = keys.root.prefix + "spend:acme-old:"  # as the earlier release named them
    await redis.set(old + day, 5 * MICRO)
    await redis.set(old + month, 7 * MICRO)
    await redis.hset(old + day + ":models", "claude-haiku-4-5", 5 * MICRO)  # type: ignore[misc]
    await redis.sadd(keys.spend_tenants, "acme-old")  # type: ignore[misc]
    moved = await move_spend_to_tenant_tags(redis, keys)
    usage = await Budgets(redis, keys).usage("acme-old", TenantConfig())
    assert (usage["spent_today_usd"], usage["spent_month_usd"]) == (5.0, 7.0)
    models = await redis.hgetall(keys.spend_models_key("acme-old", day))  # type: ignore[misc]
    assert models == {b"claude-haiku-4-5": str(5 * MICRO).encode()}
    if keys.clustered:
        assert moved == 3 and not await redis.exists(old + day)
        await redis.set(old + day, MICRO)  # written after the move (an old process left up)
        assert await move_spend_to_tenant_tags(redis, keys) == 0  # once: later starts skip it
    else:
        assert moved == 0
