"""Retry and failure classification, observed at the simulator over real HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from msgq.client import Client
from msgq.settings import Settings
from schemas import JobStatus
from tests.conftest import Sim, StartWorker, eventually

BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 20,
    "messages": [{"role": "user", "content": "retry me"}],
}


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 529},
        {"status": 500},
        {"status": 503},
        {"status": 502},
        {"status": 504},
        {"status": 408},
        {"status": 409},
        {"status": 400, "headers": {"x-should-retry": "true"}},
        {"drop": True},
        {"drop_mid_body": True},
        {"delay_s": 3},
    ],
    ids=[
        "529",
        "500",
        "503",
        "502",
        "504",
        "408",
        "409",
        "x-should-retry",
        "dropped-connection",
        "dropped-mid-body",
        "timeout",
    ],
)
async def test_transient_fault_then_success(
    fault: dict[str, Any], settings: Settings, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """A retryable fault is retried and the job succeeds on the second call."""
    sim.script(fault)
    await start_worker(settings.model_copy(update={"request_timeout_s": 1.0}))
    record = await client.wait((await client.submit(BODY)).id, timeout=20)
    assert record.status is JobStatus.SUCCEEDED, record.error
    assert record.attempts == 2
    assert sim.received == 2


async def test_retry_after_is_honoured(client: Client, sim: Sim, start_worker: StartWorker) -> None:
    """A 429 with retry-after: 2 is not retried before 2 s (simulator's own timestamps)."""
    sim.script({"status": 429, "headers": {"retry-after": "2"}})
    await start_worker()
    record = await client.wait((await client.submit(BODY)).id, timeout=20)
    assert record.status is JobStatus.SUCCEEDED
    first, second = sim.requests()
    assert first["status"] == 429 and second["status"] == 200
    assert second["time"] - first["time"] >= 2.0


async def test_retrying_record_shows_next_attempt_and_last_error(
    client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """While waiting, the record is `retrying` with next_attempt_at and the last error."""
    sim.script({"status": 529, "headers": {"retry-after": "3"}})
    await start_worker()
    job = await client.submit(BODY)

    async def retrying() -> bool:
        return (await client.get(job.id)).status is JobStatus.RETRYING

    await eventually(retrying)
    record = await client.get(job.id)
    assert record.next_attempt_at is not None and record.error is not None
    assert record.error.type == "overloaded_error" and record.error.retryable
    assert record.error.status_code == 529


@pytest.mark.parametrize(
    ("fault", "error_type"),
    [
        ({"status": 400, "message": "bad thing"}, "invalid_request_error"),
        ({"status": 401, "message": "bad key"}, "authentication_error"),
        ({"status": 403, "message": "no access"}, "permission_error"),
        ({"status": 413, "message": "too big"}, "request_too_large"),
        ({"status": 200, "body": {"hello": "world"}}, "invalid_response"),
        ({"status": 200, "malformed": True}, "invalid_response"),
    ],
    ids=[
        "400",
        "401",
        "403",
        "413",
        "not-a-message",
        "malformed",
    ],
)
async def test_final_errors_fail_after_one_call(
    fault: dict[str, Any], error_type: str, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """Final answers fail the job after exactly one call, with the error stored."""
    sim.script(fault)
    await start_worker()
    record = await client.wait((await client.submit(BODY)).id, timeout=20)
    assert record.status is JobStatus.FAILED
    assert sim.received == 1 and record.attempts == 1
    assert record.error is not None
    assert record.error.type == error_type
    assert record.error.status_code == fault["status"]
    assert record.error.request_id == sim.requests()[0]["request_id"]
    assert record.error.retryable is False
    if "message" in fault:
        assert record.error.message == fault["message"]


async def test_retries_exhausted_fail_with_last_error(
    client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """After max_attempts retryable failures the job fails with the last error."""
    sim.script({"status": 500}, {"status": 503}, {"status": 529, "message": "last one"})
    await start_worker()
    record = await client.wait((await client.submit(BODY, max_attempts=3)).id, timeout=20)
    assert record.status is JobStatus.FAILED
    assert record.attempts == 3 and sim.received == 3
    assert record.error is not None
    assert record.error.status_code == 529 and record.error.message == "last one"
