"""The deployment files stay valid: compose parses and keeps Redis durable; CI runs make test."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import yaml

from tests.conftest import Sim

ROOT = Path(__file__).parent.parent


def test_compose_file_parses_and_keeps_redis_durable() -> None:
    """docker-compose.yml: redis with append-only on, worker and simulator built from one image."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "worker", "api", "simulator"} <= set(services)
    assert services["api"]["command"][0] == "api"
    assert "--appendonly" in services["redis"]["command"]
    assert (
        services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1]
        == "yes"
    )
    assert services["worker"]["build"] == services["simulator"]["build"] == "."
    assert services["worker"]["command"] == ["worker"]
    assert services["worker"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_simulator_profile_health_checks_and_key_scope(sim: Sim) -> None:
    """The simulator profile's worker talks to the simulator with a key it accepts; Redis
    restarts; workers have a health check; the API is never given the Anthropic key."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    sim_worker = services["worker-sim"]
    assert sim_worker["profiles"] == ["simulator"] == services["simulator"]["profiles"]
    assert sim_worker["command"] == ["worker"]
    env = sim_worker["environment"]
    assert env["ANTHROPIC_BASE_URL"] == "http://simulator:8787"
    assert "simulator" in sim_worker["depends_on"]
    answer = httpx.post(
        f"{sim.url}/v1/messages",
        headers={"x-api-key": env["ANTHROPIC_API_KEY"], "anthropic-version": "2023-06-01"},
        json={
            "model": "claude-haiku-4-5",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert answer.status_code == 200  # the placeholder key is one the simulator accepts
    assert services["redis"]["restart"] == "unless-stopped"
    for name in ("worker", "worker-sim"):
        assert services[name]["healthcheck"]["test"] == ["CMD", "msgq", "worker", "--check"]
    api = services["api"]
    assert "env_file" not in api and "ANTHROPIC_API_KEY" not in api["environment"]


def test_compose_ha_profile_has_the_tested_topology() -> None:
    """Profile `ha`: a primary, its replica and three Sentinels (quorum 2) watching it, and a
    worker and an API whose REDIS_URL names those Sentinels and the service they monitor; the
    API acknowledges a job only once the replica holds it."""
    from msgq.connections import parse_sentinel_url

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    sentinels = ["sentinel-1", "sentinel-2", "sentinel-3"]
    ha = ["redis-primary", "redis-replica", *sentinels, "worker-ha", "api-ha"]
    assert all(services[name]["profiles"] == ["ha"] for name in ha)
    replica = services["redis-replica"]["command"]
    assert replica[replica.index("--replicaof") + 1 :][:2] == ["redis-primary", "6379"]
    for name in ("redis-primary", "redis-replica"):
        assert "--appendonly" in services[name]["command"]
    for name in sentinels:
        script = services[name]["command"][-1]
        assert "sentinel monitor mymaster redis-primary 6379 2" in script
        assert "--sentinel" in script
    for name in ("worker-ha", "api-ha"):
        target = parse_sentinel_url(services[name]["environment"]["REDIS_URL"])
        assert target.sentinels == tuple((s, 26379) for s in sentinels)
        assert target.service == "mymaster"
        assert set(sentinels) <= set(services[name]["depends_on"])
        assert "redis" not in services[name]["depends_on"]  # not the single-Redis service
    assert services["worker-ha"]["command"] == ["worker"]
    assert services["worker-ha"]["healthcheck"]["test"] == ["CMD", "msgq", "worker", "--check"]
    api = services["api-ha"]
    assert api["environment"]["MSGQ_SUBMIT_MIN_REPLICAS"] == "1"
    assert "env_file" not in api and "ANTHROPIC_API_KEY" not in api["environment"]


def test_ci_runs_make_test() -> None:
    """.ci/run calls `make test`, the README's test command, on a line that runs (a comment
    mentioning it does not count)."""
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    commands = [line.split("#", 1)[0].strip() for line in lines]
    assert any(re.fullmatch(r"(exec\s+)?make\s+(.*\s)?test(\s.*)?", c) for c in commands)
