"""Settling a job's ledger (`msgq.ledger`): what each reservation it holds becomes at its
ending, applied once by whichever caller takes it.

An `Outcome` says how the attempt ended. A call that never left (`NOT_SENT`) gives everything
back: the request, its input and output estimates, its budget. A call that may have reached the
API (a failure, a cancel or shutdown mid-call, a lost worker) keeps its request and input
charged, as the API may have counted them, and gives back the output and the budget (nothing
was produced, nothing billed). An answered call is charged what it used and cost.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis

from msgq.group_commit import GroupCommit
from msgq.ledger import (
    APPLIED_TTL_S,
    APPLY_SPEND,
    CLOSE_FIELD,
    CONSUME,
    DROP_IF,
    HOLD,
    RATE,
    SETTLING,
    TAKE_BUDGET,
    TAKE_CAPACITY,
    BudgetHold,
)
from msgq.tenancy.budgets import DAY_TTL_S, MICRO, NO_TENANT, Budgets, periods
from msgq.tenancy.scheduling import Estimate
from worker.ratelimit import Limits, RateLimiter, model_class


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, as the buckets and the budget need it."""

    sent: bool  # the request may have reached the API: its request and input stay charged
    cost_usd: float = 0.0
    input_counted: int | None = None  # answered: the input tokens that counted toward ITPM
    output_tokens: int = 0  # answered: what it produced
    headers: dict[str, str] | None = None  # the answer's, for the limits they announce


NOT_SENT = Outcome(sent=False)
CUT = Outcome(sent=True)  # may have reached the API; no answer stored


@dataclass(frozen=True)
class Capacity:
    """Capacity held in one bucket: the fleet's (`scope` None) or a tenant's share cap."""

    model: str
    input_tokens: int
    output_tokens: int
    scope: str | None = None
    limits: Limits | None = None  # a share cap's own limits (the fleet's are the limiter's)
    admitted_n: int | None = None  # the fleet bucket's admission count when it was taken

    def deltas(self, outcome: Outcome) -> tuple[int, int, int]:
        """(input, output, requests) to give back: positive refunds, negative charges."""
        if not outcome.sent:
            return self.input_tokens, self.output_tokens, 1
        counted = outcome.input_counted
        input_delta = 0 if counted is None else self.input_tokens - counted
        return input_delta, self.output_tokens - outcome.output_tokens, 0


def capacities(field: str, data: dict[str, Any]) -> list[Capacity]:
    """The bucket reservations one ledger field holds (none from a field that cannot be read:
    the bucket heals as it refills)."""
    try:
        return _capacities(field, data)
    except (KeyError, TypeError, ValueError):
        return []


def _capacities(field: str, data: dict[str, Any]) -> list[Capacity]:
    count = int(data["n"]) if isinstance(data.get("n"), int) else None
    if field == RATE:
        return [Capacity(data["model"], int(data["input"]), int(data["output"]), admitted_n=count)]
    held: list[Capacity] = []
    if data.get("limited") and "estimate" in data:
        est = Estimate.loads(data["estimate"])
        held.append(Capacity(est.model, est.input_tokens, est.output_tokens, admitted_n=count))
    share = data.get("share")
    if isinstance(share, dict):
        limits = Limits(int(share["rpm"]), int(share["itpm"]), int(share["otpm"]))
        held.append(
            Capacity(
                share["model"], int(share["input"]), int(share["output"]), share["scope"], limits
            )
        )
    return held


@dataclass
class Settled:
    """What a settlement found: a budget reservation (which took the cost) and capacity in the
    fleet's bucket (whose settlement read the answer's limit headers)."""

    budget: bool = False
    fleet: bool = False


async def settle_capacity(
    redis: Redis,
    limiter: RateLimiter,
    capacity: Capacity,
    outcome: Outcome,
    group: GroupCommit | None = None,
) -> None:
    """One bucket's reservation: refunded or charged by what the outcome used (with other
    jobs' settlements when `group` is given)."""
    input_delta, output_delta, requests = capacity.deltas(outcome)
    headers = outcome.headers
    if capacity.scope is not None:  # a tenant's share cap: the API's headers are not its own
        limits = {model_class(capacity.model): capacity.limits or Limits()}
        limiter, headers = RateLimiter(redis, limiter.keys, limits, scope=capacity.scope), None
    await limiter.settle(
        capacity.model,
        input_delta=input_delta,
        output_delta=output_delta,
        headers=headers,
        requests=requests,
        group=group,
        admitted_n=capacity.admitted_n if capacity.scope is None else None,
    )


class Ledgers:
    """The worker's hands on every job's ledger."""

    def __init__(
        self, redis: Redis, limiter: RateLimiter, group: GroupCommit | None = None
    ) -> None:
        self.redis, self.limiter = redis, limiter
        self.keys = limiter.keys  # the deployment's: the limiter's buckets are in it too
        self._consume = redis.register_script(CONSUME)
        self._hold = redis.register_script(HOLD)
        self._take_capacity = redis.register_script(TAKE_CAPACITY)
        self._take_budget = redis.register_script(TAKE_BUDGET)
        self._apply_spend = redis.register_script(APPLY_SPEND)
        self._close = redis.register_script(CLOSE_FIELD)
        self._drop_pending = redis.register_script(DROP_IF)
        self.budgets = Budgets(redis, self.keys)  # spend without a reservation, for usage
        self.group = group or GroupCommit(redis)  # every job's ledger steps share round trips

    async def consume_ticket(self, ticket_key: str, tickets_key: str, job_id: str) -> bytes | None:
        """The dispatcher's ticket, moved into the job's ledger; None when another run took it."""
        ks = self.keys.for_job(job_id)  # the job's partition holds its ledger
        keys = [ticket_key, tickets_key, ks.ledger_key(job_id), ks.ledger_open]
        raw: bytes | None = await self.group.call(self._consume, keys, [job_id, _now_ms()])
        return raw

    async def hold_rate(
        self,
        job_id: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        admitted_n: int | None = None,
    ) -> None:
        """Capacity this worker took from the fleet's bucket for the job (`admitted_n`: the
        bucket's admission count then)."""
        held: dict[str, object] = {"model": model, "input": input_tokens, "output": output_tokens}
        if admitted_n is not None:
            held["n"] = admitted_n
        value = orjson.dumps(held)
        part = self.keys.for_job(job_id)
        keys = [part.ledger_key(job_id), part.ledger_open]
        await self.group.call(self._hold, keys, [job_id, _now_ms(), RATE, value])

    async def settle(self, job_id: str, outcome: Outcome, *, model: str) -> Settled:
        """Settle whatever the job's ledger holds, each field by the one caller that takes it:
        capacity taken in one step for every field, a budget with its own settlement."""
        part = self.keys.for_job(job_id)
        key = part.ledger_key(job_id)
        reply = await self.group.call(self._take_capacity, [key, part.ledger_open], [job_id])
        settled = Settled()
        for n in range(0, len(reply), 3):
            field, raw, taken = reply[n].decode(), reply[n + 1], int(reply[n + 2])
            data = _loads(raw)
            if not taken:
                took, kept = await self._budget(job_id, field, raw, data, outcome, model)
                settled.budget = settled.budget or took
                if kept is None:
                    continue  # another caller settles its capacity, or nothing was reserved
                field, data = kept
            for capacity in capacities(field, data):
                await settle_capacity(self.redis, self.limiter, capacity, outcome, self.group)
                settled.fleet = settled.fleet or capacity.scope is None
        return settled

    async def _budget(
        self,
        job_id: str,
        field: str,
        raw: bytes,
        data: dict[str, Any],
        outcome: Outcome,
        model: str,
    ) -> tuple[bool, tuple[str, dict[str, Any]] | None]:
        """Settle a budget reservation in its three steps (`msgq.ledger`), or finish one left
        half done. Whether this run's cost went into the budget (then it is not recorded
        again as spend without one), and the field and data whose capacity is then settled
        (None: another caller settles it, or nothing was reserved)."""
        ks, part = self.keys, self.keys.for_job(job_id)
        ledger = [part.ledger_key(job_id), part.ledger_open]
        mine = not field.startswith(SETTLING)
        if not mine:
            entry = data  # another run's settlement left half done: finished as it recorded
        else:
            hold = BudgetHold.of(data)
            if hold is None:
                return False, None
            nonce = data.get("pending")
            if nonce and not await self._void(hold.tenant, str(nonce)):
                await self._drop(ledger, job_id, field, raw)  # never reserved: nothing to undo
                return False, None
            cost = round(outcome.cost_usd * MICRO)
            entry = {
                **hold.as_fields(),
                "delta": cost - hold.micro_usd,
                "cost": cost,
                "model": model,
                "nonce": uuid.uuid4().hex,
                "field": field,
                "held": raw.decode(),
            }
            taken = await self.group.call(
                self._take_budget, [ledger[0]], [field, raw, orjson.dumps(entry)]
            )
            if not int(taken):
                return False, None
        spend = [
            ks.spend_key(entry["tenant"], entry["day"]),
            ks.spend_key(entry["tenant"], entry["month"]),
            ks.spend_models_key(entry["tenant"], entry["day"]),
            ks.spend_applied_key(entry["tenant"], entry["nonce"]),
        ]
        args = [entry["delta"], entry["cost"], entry["model"], DAY_TTL_S, APPLIED_TTL_S]
        await self.group.call(self._apply_spend, spend, args)
        closing = SETTLING + entry["field"]
        if not int(await self.group.call(self._close, ledger, [job_id, closing])):
            return mine, None  # another caller finished it, and settles its capacity
        return mine, (entry["field"], _loads(entry["held"].encode()))

    async def _void(self, tenant: str, nonce: str) -> bool:
        """For a hold still `pending`: True when its reservation was made (its marker says
        so); else the marker is set `void` first, so a reservation still in flight for it is
        refused (`RESERVE`) and the hold can be dropped safely."""
        marker = self.keys.spend_applied_key(tenant, nonce)
        if await self.redis.set(marker, "void", nx=True, ex=APPLIED_TTL_S):
            return False
        return bool(await self.redis.get(marker) != b"void")

    async def _drop(self, ledger: list[str], job_id: str, field: str, raw: bytes) -> None:
        """Drop a never-reserved pending hold, only if it is still the one read."""
        await self.group.call(self._drop_pending, ledger, [job_id, field, raw])

    async def record_spend(self, tenant: str | None, cost_usd: float, model: str) -> None:
        """Spend of a job that held no budget reservation (no budget, or no tenant at all), for
        usage reports: they add up to what the records cost."""
        if cost_usd:
            keys, args = self.budgets.record_step(tenant, cost_usd, model)
            await self.group.call(self.budgets.record_script, keys, args, merge=True)
            await self.budgets.listed(tenant or NO_TENANT, periods()[0])

    async def learn(self, model: str, headers: dict[str, str]) -> None:
        """The limits an answer's headers announce, for a call sent with no capacity held."""
        await self.limiter.settle(
            model, input_delta=0, output_delta=0, headers=headers, group=self.group
        )


def _now_ms() -> int:
    return int(time.time() * 1000)


def _loads(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}
