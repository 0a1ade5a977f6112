"""Common first-day mistakes get an error that says what to do (issue 25, traps 1 and 7)."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson

from msgq.client import Client
from msgq.settings import Settings
from tests.conftest import SAMPLES, StartWorker
from tests.test_cli import amsgq, msgq

TEXT_BODY = orjson.loads((SAMPLES / "requests" / "text.json").read_bytes())


async def test_a_bare_messages_body_on_v1_jobs_hints_at_the_request_wrapper(
    api: httpx.AsyncClient,
) -> None:
    """POSTing the Messages body itself to /v1/jobs says to wrap it in {"request": ...}."""
    answer = await api.post("/v1/jobs", json=TEXT_BODY)
    assert answer.status_code == 422
    assert '{"request": {"model": ..., "messages": ...}}' in answer.json()["error"]["message"]


async def test_two_model_rule_problems_are_both_reported(api: httpx.AsyncClient) -> None:
    """Prefill and a non-default temperature on a model that refuses both: two field errors."""
    request = {
        "model": "claude-opus-4-7",
        "max_tokens": 16,
        "temperature": 0.5,
        "messages": [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "The colour is"},
        ],
    }
    answer = await api.post("/v1/jobs", json={"request": request})
    assert answer.status_code == 422
    rules = [e for e in answer.json()["error"]["errors"] if e["type"] == "model_rule"]
    assert sorted(e["loc"].rsplit(".", 1)[-1] for e in rules) == ["messages", "temperature"]


def test_status_of_an_http_job_without_tenant_suggests_it(settings: Settings) -> None:
    """`msgq status order-1` for a job the HTTP API stored as tenant:order-1 names --tenant."""
    done = msgq(settings, "status", "order-1")
    assert done.returncode == 2
    assert "add --tenant TENANT" in done.stderr


async def test_submit_warns_and_audit_fails_when_no_worker_serves_the_queue(
    settings: Settings, client: Client, tmp_path: Path, start_worker: StartWorker
) -> None:
    """No worker on this Redis: submit still prints the ID but warns on stderr, and `msgq
    audit` reports the waiting job; once a worker runs, the job ends and neither complains."""
    path = tmp_path / "text.json"
    path.write_bytes(orjson.dumps(TEXT_BODY))
    submitted = await amsgq(settings, "submit", str(path))
    assert submitted.returncode == 0 and submitted.stdout.strip()
    assert "no worker has been seen" in submitted.stderr
    audited = await amsgq(settings, "audit")
    assert audited.returncode == 1
    assert "jobs waiting on a queue with no live worker" in audited.stdout

    await start_worker()
    job_id = submitted.stdout.strip()
    assert (await client.wait(job_id, timeout=20)).status.value == "succeeded"
    again = await amsgq(settings, "submit", str(path), "--id", "second")
    assert "no worker" not in again.stderr
