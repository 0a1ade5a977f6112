"""The msgq worker: arq's worker loop with msgq's task, admission, upstream call, rate limiter and
adaptive concurrency. The core it builds on lives in `msgq`; nothing in `msgq` imports this."""

from msgq.extras import require

require("worker", "the msgq worker", "httpx", "prometheus_client")
