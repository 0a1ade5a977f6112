"""Capabilities from the Models API: the workers' copy in Redis (every page), validation
against it, `msgq models`, count_tokens, and unknown models counted once per process."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner
from redis.asyncio import Redis

from msgq import model_catalog
from msgq.cli.main import cli
from msgq.client import Client
from msgq.errors import InvalidJobError, RejectedError
from msgq.model_catalog import load_catalog
from msgq.settings import Settings
from tests.conftest import KEYS, SAMPLES, Sim, StartWorker, eventually
from worker.upstream import models as models_refresh

TEXT = json.loads((SAMPLES / "requests" / "text.json").read_text())


async def catalog_ready(redis: Redis, start_worker: StartWorker, sim: Sim) -> list[str]:
    """Start a worker with 5-model pages; wait for its copy; the ids the simulator lists."""
    listed = [
        m["id"]
        for m in sim.http.get(
            "/v1/models",
            params={"limit": 1000},
            headers={"x-api-key": "k" * 12, "anthropic-version": "2023-06-01"},
        ).json()["data"]
    ]
    await start_worker()

    async def stored() -> bool:
        return await load_catalog(redis, KEYS) is not None

    await eventually(stored)
    return listed


async def test_workers_store_every_page_of_models(
    redis: Redis, start_worker: StartWorker, sim: Sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At start a worker reads GET /v1/models page by page into Redis: every model, in order."""
    monkeypatch.setattr(models_refresh, "PAGE_LIMIT", 5)
    listed = await catalog_ready(redis, start_worker, sim)
    catalog = await load_catalog(redis, KEYS)
    assert catalog is not None and len(listed) > 10
    assert [m["id"] for m in catalog.models] == listed
    haiku = catalog.limits()["claude-haiku-4-5"]  # the undated alias finds the snapshot
    assert haiku.max_tokens == 64_000 and haiku.thinking_types == {"enabled", "disabled"}


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"thinking": {"type": "adaptive"}}, "thinking"),
        ({"output_config": {"effort": "high"}}, "output_config.effort"),
    ],
)
async def test_submit_refuses_what_the_model_does_not_accept(
    extra: dict[str, Any],
    field: str,
    client: Client,
    redis: Redis,
    start_worker: StartWorker,
    sim: Sim,
) -> None:
    """With the fleet's copy, limits the table does not hold are refused up front, model named."""
    await catalog_ready(redis, start_worker, sim)
    request = {**TEXT, **extra}
    with pytest.raises(InvalidJobError) as refused:
        await client.submit(request)
    assert refused.value.errors[0]["loc"] == field
    assert "claude-haiku-4-5" in refused.value.errors[0]["msg"]
    assert sim.received == 0


async def test_unknown_model_is_accepted_and_logged_once(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model nobody knows is accepted, with one log line per process however often seen."""
    monkeypatch.setattr(model_catalog, "_unknown_seen", set())
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            await client.submit({**TEXT, "model": "claude-nova-9"})
    assert [e["model"] for e in logs if e["event"] == "model.unknown"] == ["claude-nova-9"]


async def test_msgq_models_says_where_each_part_came_from(
    redis: Redis,
    settings: Settings,
    start_worker: StartWorker,
    sim: Sim,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`msgq models --json`: limits from the Models API, rules and prices from models.toml."""
    await catalog_ready(redis, start_worker, sim)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["model"]: row for row in json.loads(result.output)}
    haiku = rows["claude-haiku-5-5"]
    assert haiku["limits_from"].startswith("models api") and haiku["max_tokens"] == 128_000
    assert haiku["prices_from"] == "models.toml" and haiku["prices"]["input"] == 0.1
    assert haiku["prices"]["long_context"]["above_input_tokens"] == 100_000
    assert rows["claude-mythos-preview"]["limits_from"].startswith("none")


async def test_count_tokens_calls_the_api_outside_the_messages_buckets(
    client: Client, sim: Sim, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Client.count_tokens and `msgq count-tokens FILE` answer the API's count; no Messages
    call is made (its own limits, not the Messages buckets)."""
    counted = await client.count_tokens(TEXT)
    assert counted > 0
    path = tmp_path / "r.json"
    path.write_text(json.dumps(TEXT))
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", settings.anthropic_api_key.get_secret_value())  # type: ignore[union-attr]
    monkeypatch.setenv("ANTHROPIC_BASE_URL", settings.anthropic_base_url)
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["count-tokens", str(path)])
    assert result.exit_code == 0, result.output
    assert int(result.output) == counted
    assert sim.received == 0
    cited = {"type": "text", "text": "a", "citations": [{"type": "char_location"}]}
    request = {**TEXT, "messages": [{"role": "user", "content": [cited]}]}
    assert await client.count_tokens(request, anthropic_version="2023-06-01") > 0
    with pytest.raises(RejectedError, match="citations"):  # sent with the version asked for
        await client.count_tokens(request, anthropic_version="2026-10-21")
