"""Fleet-wide gauges that both the worker and the HTTP API export (one definition each).

Only the processes that serve /metrics import this module; the producer client does not.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

QUEUE_DEPTH = Gauge("msgq_queue_depth", "jobs waiting or deferred in the queue")
PAUSED = Gauge("msgq_fleet_paused", "1 while a spend-limit pause holds the fleet")
API_REQUESTS = Counter("msgq_api_requests_total", "HTTP API requests", ["method", "status"])
TENANT_SPEND = Gauge(
    "msgq_tenant_spend_usd", "USD reserved and spent by a tenant", ["tenant", "period"]
)
TENANT_REMAINING = Gauge(
    "msgq_tenant_budget_remaining_usd", "USD left in a tenant's budget", ["tenant", "period"]
)
SCHEDULED = Gauge("msgq_scheduled_jobs", "jobs waiting for admission in the scheduler")
