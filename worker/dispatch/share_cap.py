"""A tenant's share cap (`rpm_share`, `itpm_share`, `otpm_share`): a bucket of its own, scaled
from the fleet's limits, from which the dispatcher takes each of the tenant's jobs as it admits
it. What it takes rides in the job's ticket (`share`), so it is settled like the fleet's capacity:
refunded when the job does not send, charged what the call used once it did."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from msgq.tenancy.tenants import TenantConfig
from worker.dispatch.queues import Head
from worker.ledger import NOT_SENT, Capacity, settle_capacity
from worker.ratelimit import Limits, RateLimiter


class ShareCaps:
    def __init__(self, redis: Redis, limiter: RateLimiter) -> None:
        self.redis, self.limiter = redis, limiter
        self._limiters: dict[str, RateLimiter] = {}

    def capacity(self, head: Head, config: TenantConfig) -> Capacity | None:
        """What the job takes from its tenant's bucket; None when the tenant has no cap."""
        if not (config.rpm_share or config.itpm_share or config.otpm_share):
            return None
        lim = self.limiter.limits.get(head.cls) or self.limiter.limits.get("default") or Limits()
        scaled = Limits(
            rpm=int(lim.rpm * (config.rpm_share or 1)),
            itpm=int(lim.itpm * (config.itpm_share or 1)),
            otpm=int(lim.otpm * (config.otpm_share or 1)),
        )
        est = head.estimate
        scope = f"tenant:{head.tenant}"
        return Capacity(est.model, est.input_tokens, est.output_tokens, scope, scaled)

    async def take(self, head: Head, capacity: Capacity, now_ms: int) -> float | None:
        """Seconds to hold the tenant back when its cap is reached; None when it was taken."""
        limits = capacity.limits or Limits()
        limiter = self._limiters.get(head.tenant or "")
        if limiter is None or limiter.limits.get(head.cls) != limits:
            limiter = RateLimiter(
                self.redis, self.limiter.keys, {head.cls: limits}, scope=capacity.scope
            )
            self._limiters[head.tenant or ""] = limiter
        admission = await limiter.acquire(
            capacity.model,
            input_tokens=capacity.input_tokens,
            output_tokens=capacity.output_tokens,
            now_ms=now_ms,
            holder=head.job_id,
        )
        return None if admission.admitted else admission.wait_s

    async def give_back(self, capacity: Capacity | None) -> None:
        """The job was not admitted after all: its share goes back."""
        if capacity is not None:
            await settle_capacity(self.redis, self.limiter, capacity, NOT_SENT)


def ticket_fields(capacity: Capacity | None) -> dict[str, Any]:
    """The ticket's `share`, as `worker.ledger.capacities` reads it back."""
    if capacity is None:
        return {}
    limits = capacity.limits or Limits()
    share = {
        "scope": capacity.scope,
        "model": capacity.model,
        "input": capacity.input_tokens,
        "output": capacity.output_tokens,
        "rpm": limits.rpm,
        "itpm": limits.itpm,
        "otpm": limits.otpm,
    }
    return {"share": share}
