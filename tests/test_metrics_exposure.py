"""What /metrics shows without a key, and who exports the fleet gauges.

Per-tenant series (names, spend, budget left) are opt-in (`MSGQ_METRICS_TENANTS=true`); fleet
totals stay open. The fleet gauges come from the API alone, so summing every scraped process
does not count the queue once per worker; the worker exports its own metrics only.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from msgq.client import Client
from msgq.dev.embedded_redis import free_port
from msgq.dev.stack import msgq_command
from msgq.settings import Settings
from msgq.tenancy.budgets import Budgets
from tests.conftest import KEYS, eventually, stop_workers, worker_env
from tests.test_crash import BODY

FLEET = ("msgq_queue_depth", "msgq_fleet_paused", "msgq_scheduled_jobs")
TENANT_FAMILIES = ("msgq_tenant_spend_usd", "msgq_tenant_budget_remaining_usd")


async def scrape(settings: Settings) -> str:
    from msgq.http.app import create_app

    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        answer = await http.get("/metrics")
    assert answer.status_code == 200
    return answer.text


@pytest.fixture
async def spending(api_settings: Settings, redis: Redis, tmp_path: Path) -> Settings:
    """A tenant with a budget and spend today, named so it is easy to look for."""
    tenants = tmp_path / "tenants.toml"
    tenants.write_text("[tenants.secretive-co]\nbudget_usd_day = 50.0\n")
    await Budgets(redis, KEYS).record("secretive-co", 1.25, "claude-haiku-4-5")
    return api_settings.model_copy(update={"tenants_file": tenants})


async def test_tenant_series_are_opt_in(spending: Settings, redis: Redis, client: Client) -> None:
    """Without MSGQ_METRICS_TENANTS no tenant name, spend or budget appears, while the fleet
    totals (read from Redis now: a job waiting for admission, a pause) do; with it, the
    tenant's series do."""
    await client.submit(BODY)
    await redis.set(KEYS.pause_key, "spend limit")
    closed = await scrape(spending)
    assert "secretive-co" not in closed
    assert not any(family in closed for family in TENANT_FAMILIES)
    assert "msgq_scheduled_jobs 1.0" in closed and "msgq_queue_depth 0.0" in closed
    assert "msgq_fleet_paused 1.0" in closed
    opened = await scrape(spending.model_copy(update={"metrics_tenants": True}))
    assert 'msgq_tenant_spend_usd{period="today",tenant="secretive-co"} 1.25' in opened
    assert 'msgq_tenant_budget_remaining_usd{period="today",tenant="secretive-co"} 48.75' in opened


def spawn_worker(settings: Settings, port: int, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    env = worker_env(settings, MSGQ_METRICS_PORT=str(port))
    return subprocess.Popen(msgq_command("worker"), env=env, stdout=out, stderr=out)


async def test_the_worker_exports_no_fleet_gauges(settings: Settings, tmp_path: Path) -> None:
    """`msgq worker` with MSGQ_METRICS_PORT: its own metrics, but not the fleet gauges the API
    exports (queue depth, pause, scheduler backlog), no tenant series, and no sample-less
    `msgq_api_requests_total` family."""
    port = free_port()
    worker = spawn_worker(settings, port, tmp_path / "worker.log")
    text = ""
    try:

        async def scraped() -> bool:
            nonlocal text
            try:
                async with httpx.AsyncClient() as http:
                    text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            except httpx.TransportError:
                return False
            return "msgq_attempts_total" in text

        await eventually(scraped, timeout_s=20)
    finally:
        assert stop_workers(worker) == [0]
    assert "msgq_in_flight" in text and "msgq_webhook_deliveries" in text
    for family in (*FLEET, *TENANT_FAMILIES, "msgq_api_requests_total"):
        assert family not in text, family


async def test_the_api_counts_its_requests_by_method_and_status(
    api: httpx.AsyncClient,
) -> None:
    """`msgq_api_requests_total{method,status}`, counted as each answer starts, refusals too."""
    from msgq.http.metrics import API_REQUESTS

    def count(method: str, status: str) -> float:
        return API_REQUESTS.labels(method, status)._value.get()

    ok, refused = count("GET", "200"), count("GET", "401")
    assert (await api.get("/v1/jobs")).status_code == 200
    assert (
        await api.get("/v1/jobs", headers={"x-api-key": "wrong-key-0123456"})
    ).status_code == 401
    assert count("GET", "200") == ok + 1
    assert count("GET", "401") == refused + 1
    text = (await api.get("/metrics")).text
    assert 'msgq_api_requests_total{method="GET",status="401"}' in text
