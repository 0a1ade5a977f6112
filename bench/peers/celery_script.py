"""Celery as a user writes it: the Redis broker and result backend, the gevent pool, and a
task that POSTs the Messages request with one `requests` session or one httpx client
(PEER_CLIENT) and returns the reply (the result backend stores it). Runs in the peer's venv.

The worker: `celery -A celery_script worker -P gevent -c 512` (the console script patches for
gevent before this module is imported). `python celery_script.py produce N` sends N tasks and
prints, once all ended, {"ok", "first_start", "last_end"} as JSON.

Both clients are sized for 512 calls in flight, as a user who set concurrency 512 would: with
their defaults, httpx would queue calls behind 100 connections and requests would open and
drop a connection for every call beyond 10.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from celery import Celery

app = Celery("peer", broker=os.environ["REDIS_URL"], backend=os.environ["REDIS_URL"])
app.conf.broker_connection_retry_on_startup = True
URL = os.environ["SIM_URL"] + "/v1/messages"
HEADERS = {"x-api-key": os.environ["ANTHROPIC_API_KEY"], "anthropic-version": "2023-06-01"}
_client: Any = None


def client() -> Any:
    """One client for the process, made on first use (after gevent's patching)."""
    global _client  # one shared session is the point
    if _client is None:
        if os.environ.get("PEER_CLIENT") == "httpx":
            import httpx

            limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
            _client = httpx.Client(headers=HEADERS, limits=limits, timeout=120)
        else:
            import requests
            from requests.adapters import HTTPAdapter

            _client = requests.Session()
            _client.headers.update(HEADERS)
            _client.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=512))
    return _client


@app.task(name="call")
def call(body: dict[str, Any]) -> dict[str, Any]:
    started = time.time()
    response = client().post(URL, json=body, timeout=120)
    response.raise_for_status()
    return {"t0": started, "t1": time.time(), "message": response.json()}


def produce(n: int) -> None:
    template = json.loads(os.environ["PEER_BODY"])
    sent = [
        call.delay({**template, "messages": [{"role": "user", "content": f"call {i}"}]})
        for i in range(n)
    ]
    results = []
    for result in sent:
        try:
            results.append(result.get(timeout=900))
        except Exception:  # a failed task counts as not ok
            continue
    print(
        json.dumps(
            {
                "ok": len(results),
                "first_start": min(r["t0"] for r in results),
                "last_end": max(r["t1"] for r in results),
            }
        )
    )


if __name__ == "__main__":
    produce(int(sys.argv[2]))
