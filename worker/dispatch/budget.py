"""A tenant's budget at admission: reserve the job's cost, or fail it (`on_budget = "fail"`), or
hold the tenant back and say so on its waiting jobs (`on_budget = "wait"`)."""

from __future__ import annotations

import time

import structlog

from msgq.jobs.store import JobStore
from msgq.tenancy.budgets import Budgets, Reservation, budget_message
from msgq.tenancy.tenants import Tenants
from schemas import JobError, JobErrorType, JobRecord, JobStatus
from worker import transitions
from worker.dispatch.fair_share import FairShare
from worker.dispatch.queues import Head

log = structlog.get_logger("msgq.dispatcher")

BUDGET_MARK_MAX = 500  # records marked `waiting_reason: budget` per blocked tenant and tick


class BudgetGate:
    def __init__(
        self, store: JobStore, budgets: Budgets, tenants: Tenants, policy: FairShare
    ) -> None:
        self.store, self.budgets, self.tenants, self.policy = store, budgets, tenants, policy
        self._marked: dict[str, set[str]] = {}  # tenants waiting for budget: jobs marked
        self._last_read: dict[str, list[str]] = {}

    async def reserve(self, head: Head) -> Reservation | bool | None:
        """None: no budget. A Reservation. False: at the budget (waiting, or failed)."""
        config = self.tenants.get(head.tenant)
        if not config.has_budget:
            return None
        outcome = await self.budgets.reserve(head.tenant, config, head.estimate.usd)
        if isinstance(outcome, Reservation):
            return outcome
        if config.on_budget == "fail":
            await self._fail(head, outcome)
        else:
            await self._wait(head, outcome)
        return False

    async def _fail(self, head: Head, period: str) -> None:
        error = JobError(
            type=JobErrorType.BUDGET_EXCEEDED,
            message=budget_message(head.tenant, period),
        )
        stored = await transitions.finish(self.store, head.job_id, JobStatus.FAILED, error=error)
        if stored is not None:
            await self.store.unqueue(head.job_id)

    async def _wait(self, head: Head, period: str) -> None:
        """Until the period rolls over (checked again each minute)."""
        self.policy.blocked[head.tenant] = time.monotonic() + 60
        self._marked.setdefault(head.tenant, set())
        await self.mark_waits(self._last_read)
        log.info("dispatcher.budget_wait", tenant=head.tenant, period=period)

    async def mark_waits(self, read_by_tenant: dict[str, list[str]]) -> None:
        """Say `waiting_reason: budget` on the jobs of tenants waiting for budget: the ones at
        the front of their queues, read each tick (bounded work however deep the backlog, where
        rewriting every queued job took 25-40 s per 100,000; deadlines are watched by the
        intake either way)."""
        self._last_read = read_by_tenant
        now = time.monotonic()
        for tenant, marked in list(self._marked.items()):
            if self.policy.blocked.get(tenant, 0) <= now:
                del self._marked[tenant]
                continue
            for job_id in read_by_tenant.get(tenant, [])[:BUDGET_MARK_MAX]:
                if job_id not in marked:
                    await self.store.update(job_id, _waiting_for_budget)
                    marked.add(job_id)


def _waiting_for_budget(record: JobRecord) -> JobRecord | None:
    if record.waiting_reason == "budget" or record.status is not JobStatus.QUEUED:
        return None  # already said, or admitted meanwhile (its start clears the reason)
    return record.model_copy(update={"waiting_reason": "budget"})
