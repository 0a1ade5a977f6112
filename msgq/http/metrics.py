"""What the HTTP API's `/metrics` exports: its own requests, and the fleet-wide gauges.

The fleet gauges (queue depth, scheduler backlog, the spend-limit pause, per-tenant spend) are
read from Redis at scrape time, and only here: the worker exports its own process's metrics and
none of these, so a `sum()` across every scraped process counts each job once. Several API
replicas each report the same fleet-wide value: aggregate them with `max()`, or scrape one.

Per-tenant series name every tenant and its spend, and /metrics needs no key, so they live in a
registry of their own that is exported only with `MSGQ_METRICS_TENANTS=true`.
"""

from __future__ import annotations

from prometheus_client import REGISTRY as PROCESS_REGISTRY
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from redis.asyncio import Redis
from starlette.types import Message, Scope

from msgq.http.response_start import ResponseStart
from msgq.settings import Settings
from msgq.tenancy.budgets import Budgets
from msgq.tenancy.tenants import load_tenants

TENANT_REGISTRY = CollectorRegistry(auto_describe=True)

API_REQUESTS = Counter("msgq_api_requests_total", "HTTP API requests", ["method", "status"])


class CountRequests(ResponseStart):
    """ASGI middleware: `msgq_api_requests_total` by method and status, counted as the answer
    starts."""

    def on_start(self, scope: Scope, message: Message) -> Message:
        API_REQUESTS.labels(scope["method"], str(message["status"])).inc()
        return message


QUEUE_DEPTH = Gauge("msgq_queue_depth", "jobs waiting or deferred in the queue (fleet-wide)")
PAUSED = Gauge("msgq_fleet_paused", "1 while a spend-limit pause holds the fleet")
SCHEDULED = Gauge("msgq_scheduled_jobs", "jobs waiting for admission in the scheduler")
TENANT_SPEND = Gauge(
    "msgq_tenant_spend_usd",
    "USD reserved and spent by a tenant",
    ["tenant", "period"],
    registry=TENANT_REGISTRY,
)
TENANT_REMAINING = Gauge(
    "msgq_tenant_budget_remaining_usd",
    "USD left in a tenant's budget",
    ["tenant", "period"],
    registry=TENANT_REGISTRY,
)


async def exposition(redis: Redis, settings: Settings) -> bytes:
    """The Prometheus text of one scrape, the fleet gauges read now."""
    QUEUE_DEPTH.set(sum([await redis.zcard(part.queue) for part in settings.keys.parts]))
    SCHEDULED.set(await redis.hlen(settings.keys.sched_where))  # type: ignore[misc]  # redis-py: untyped
    PAUSED.set(1 if await redis.exists(settings.keys.pause_key) else 0)
    text = generate_latest(PROCESS_REGISTRY)
    if settings.metrics_tenants:
        await _tenant_spend(redis, settings)
        text += generate_latest(TENANT_REGISTRY)
    return text


async def _tenant_spend(redis: Redis, settings: Settings) -> None:
    """Per-tenant spend today and this month, and what remains of each budget."""
    tenants = load_tenants(settings.tenants_file)
    budgets = Budgets(redis, settings.keys)
    for tenant in sorted(set(tenants.names()) | set(await budgets.tenants())):
        usage = await budgets.usage(tenant, tenants.get(tenant))
        for period in ("today", "month"):
            spent = usage[f"spent_{period}_usd"]
            TENANT_SPEND.labels(tenant, period).set(float(spent))  # type: ignore[arg-type]
            remaining = usage[f"remaining_{period}_usd"]
            if remaining is not None:
                TENANT_REMAINING.labels(tenant, period).set(float(remaining))  # type: ignore[arg-type]
