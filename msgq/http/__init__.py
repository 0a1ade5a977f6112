"""`msgq api`: the HTTP API (jobs, Message Batches compatible routes, health, metrics)."""

from msgq.extras import require

require("api", "the msgq HTTP API", "fastapi", "uvicorn", "prometheus_client")
