"""The deployment files stay valid: compose parses and keeps Redis durable; CI runs make test."""

from __future__ import annotations

from pathlib import Path

import yaml

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


def test_ci_runs_make_test() -> None:
    """.ci/run calls `make test`, the README's test command."""
    assert "make test" in (ROOT / ".ci" / "run").read_text()
