"""Worker metrics (prometheus-client), served on MSGQ_METRICS_PORT when it is set.

Process-wide, as Prometheus expects: one set per worker process, scraped per process. Fleet-wide
gauges (queue depth, the spend-limit pause, tenants' spend) are exported by the HTTP API alone
(msgq.http.metrics): exported by every worker too, a sum() across processes counted them again
for each one.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOBS_FINISHED = Counter("msgq_jobs_finished_total", "jobs reaching a final status", ["status"])
ATTEMPTS = Counter("msgq_attempts_total", "calls made to the Messages API")
RETRIES = Counter("msgq_retries_total", "retries scheduled, by cause", ["cause"])
UPSTREAM = Counter("msgq_upstream_responses_total", "API answers by HTTP status", ["status"])
UPSTREAM_LATENCY = Histogram(
    "msgq_upstream_latency_seconds",
    "one API call, send to full body",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
QUEUE_WAIT = Histogram(
    "msgq_queue_wait_seconds",
    "created to first attempt",
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800, 3600),
)
LIMITER_WAIT = Histogram(
    "msgq_limiter_wait_seconds",
    "time a job waited for fleet rate-limit capacity",
    buckets=(0.001, 0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60),
)
TOKENS = Counter("msgq_tokens_total", "tokens reported by the API", ["kind"])
COST = Counter("msgq_cost_usd_total", "cost of succeeded jobs in USD")
CONCURRENCY = Gauge("msgq_concurrency_limit", "adaptive concurrency limit of this worker")
IN_FLIGHT = Gauge("msgq_in_flight", "API calls in flight in this worker")
# Counted by the webhook dispatcher (`worker.webhooks`, in every worker; one delivers at a time).
WEBHOOKS = Counter(
    "msgq_webhook_deliveries_total",
    "webhook delivery attempts by outcome: delivered, retried, refused, failed (gave up), gone",
    ["outcome"],
)
UNKNOWN_MODELS = Counter(
    "msgq_unknown_model_jobs_total",
    "jobs for a model neither models.toml nor the Models API knows (no price, permissive rules)",
    ["model"],
)
