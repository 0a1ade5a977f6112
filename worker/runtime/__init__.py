"""The worker runtime: the arq task, one attempt, record transitions, the upstream call, the
fleet rate limiter and adaptive concurrency. Imports nothing from http, cli or caption."""

from worker.extras import require

require("worker", "the msgq worker", "httpx", "prometheus_client")
