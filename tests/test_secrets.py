"""The API key never reaches a log line, a stored record, an error, or the Redis keyspace."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import structlog
from redis.asyncio import Redis

from msgq.client import Client
from msgq.logs import configure_logging, register_secret, scrub_secrets
from schemas import JobStatus
from tests.conftest import TEST_API_KEY, Sim, StartWorker

BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 20,
    "messages": [{"role": "user", "content": "keep it secret"}],
}


@pytest.fixture(autouse=True)
def _restore_logging() -> Any:
    yield
    structlog.reset_defaults()


async def test_key_absent_from_logs_records_errors_and_redis(
    redis: Redis,
    client: Client,
    sim: Sim,
    start_worker: StartWorker,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Success, retry and failure paths: the key appears nowhere msgq writes."""
    caplog.set_level(logging.DEBUG)
    configure_logging(fmt="json", level="debug")
    sim.script(
        {"status": 529},
        {"status": 200},
        {"status": 401, "message": f"invalid x-api-key {TEST_API_KEY[:6]}"},
    )
    await start_worker()
    ok = await client.wait((await client.submit(BODY)).id, timeout=20)
    bad = await client.wait((await client.submit(BODY)).id, timeout=20)
    assert ok.status is JobStatus.SUCCEEDED and bad.status is JobStatus.FAILED

    dumped: list[bytes] = []
    async for key in redis.scan_iter("*"):
        kind = (await redis.type(key)).decode()
        if kind == "string":
            dumped.append(await redis.get(key) or b"")
        dumped.append(await redis.dump(key) or b"")
    captured = capsys.readouterr()
    haystacks = [
        captured.out,
        captured.err,
        caplog.text,
        ok.model_dump_json(),
        bad.model_dump_json(),
        *(d.decode("latin-1") for d in dumped),
    ]
    assert all(TEST_API_KEY not in text for text in haystacks)
    assert '"event": "job.finished"' in captured.err  # the logs were really captured


def test_scrubber_redacts_registered_secrets() -> None:
    """Even an exception message carrying the key is redacted before rendering."""
    register_secret(TEST_API_KEY)
    event: dict[str, Any] = {"event": "x", "error": f"boom {TEST_API_KEY} boom"}
    assert scrub_secrets(None, "info", event)["error"] == "boom [redacted] boom"
    with structlog.testing.capture_logs() as logs:
        structlog.get_logger().info("y", note="clean")
    assert logs == [{"event": "y", "note": "clean", "log_level": "info"}]
