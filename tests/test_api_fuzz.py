"""Property-based: schemathesis drives `msgq api` (a subprocess) from its own /openapi.json."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode

from msgq.dev.embedded_redis import free_port
from msgq.dev.stack import msgq_command, wait_http
from msgq.settings import Settings
from tests.conftest import KEY_A, stop_process, worker_env

EXAMPLES_PER_OPERATION = 25


@pytest.fixture
def api_process(api_settings: Settings) -> Iterator[str]:
    """`msgq api` as a user runs it: the CLI verb, real HTTP on loopback."""
    assert api_settings.api_keys is not None
    port = free_port()
    env = worker_env(api_settings, MSGQ_API_KEYS=api_settings.api_keys.get_secret_value())
    process = subprocess.Popen(
        msgq_command("api", "--port", str(port)), env=env, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/healthz", process=process)
        yield url
    finally:
        stop_process(process)


def test_api_subprocess_serves_openapi_and_jobs(api_process: str) -> None:
    """The CLI-started API answers /openapi.json, auth and a job round trip."""
    spec = httpx.get(f"{api_process}/openapi.json").json()
    assert "/v1/messages/batches/{batch_id}/results" in spec["paths"]
    assert httpx.get(f"{api_process}/v1/jobs").status_code == 401
    body = {
        "request": {
            "model": "claude-haiku-4-5",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}],
        },
        "id": "sub-1",
    }
    created = httpx.post(
        f"{api_process}/v1/jobs",
        json=body,
        headers={"x-api-key": KEY_A, "anthropic-version": "2023-06-01"},
    )
    assert created.status_code == 202 and created.json()["id"] == "sub-1"


def test_no_operation_answers_500(api_process: str) -> None:
    """Generated valid and invalid calls to every operation never get a 5xx."""
    schema = schemathesis.openapi.from_url(f"{api_process}/openapi.json")
    strategies = [
        result.ok().as_strategy(generation_mode=mode)
        for result in schema.get_all_operations()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ]
    seen: list[int] = []

    @settings(
        max_examples=EXAMPLES_PER_OPERATION * len(strategies),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=st.one_of(strategies))
    def check(case: Any) -> None:
        response = case.call(
            base_url=api_process,
            headers={"x-api-key": KEY_A, "anthropic-version": "2023-06-01"},
            timeout=30,
        )
        seen.append(response.status_code)
        assert response.status_code < 500, (case.method, case.formatted_path, response.text)

    check()
    assert len(seen) >= len(strategies)


V2026 = {"x-api-key": KEY_A, "anthropic-version": "2026-10-21"}
MALFORMED_CONTENT = [5, True, 1.5, "text", {"a": 1}, [5]]


def _search_result(content: Any) -> dict[str, Any]:
    block = {"type": "search_result", "source": "s", "title": "t", "content": content}
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": [block]}],
    }


@pytest.mark.parametrize("content", MALFORMED_CONTENT)
def test_a_malformed_block_is_refused_in_the_apis_shape(api_process: str, content: Any) -> None:
    """A search_result whose `content` is 5, true, ... under 2026-10-21: the drop-in answers
    400 `invalid_request_error`, /v1/jobs 422, both in the API's error shape; a batch takes it
    (the API ends such a request `errored`, not the batch). None answers 500."""
    body = _search_result(content)
    dropin = httpx.post(f"{api_process}/v1/messages", json=body, headers=V2026, timeout=30)
    assert dropin.status_code == 400, dropin.text
    assert dropin.json()["error"]["type"] == "invalid_request_error"
    assert "messages.0.content" in dropin.json()["error"]["message"]
    job = httpx.post(f"{api_process}/v1/jobs", json={"request": body}, headers=V2026, timeout=30)
    assert job.status_code == 422, job.text
    assert job.json()["type"] == "error"
    batch = {"requests": [{"custom_id": "a", "params": body}]}
    created = httpx.post(f"{api_process}/v1/messages/batches", json=batch, headers=V2026)
    assert created.status_code == 200, created.text


def test_opaque_blocks_never_answer_500(api_process: str) -> None:
    """Blocks the schemas leave to the API, with any JSON inside, under every version, on
    /v1/jobs and /v1/messages/batches: accepted or refused in the API's shape, never a 5xx.
    (The drop-in is covered above: an accepted body would wait for a worker.)"""
    from tests.test_fuzz import opaque_bodies

    seen: list[int] = []

    @settings(
        max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(opaque_bodies, st.sampled_from(["2026-10-21", "2023-06-01"]))
    def check(body: dict[str, Any], version: str) -> None:
        headers = {
            "x-api-key": KEY_A,
            "anthropic-version": version,
            "content-type": "application/json",
        }
        # orjson, as a client library would: a generated infinity goes as null, where the
        # stdlib encoder httpx uses refuses to send it at all
        batch_body = {"requests": [{"custom_id": "a", "params": body}]}
        with httpx.Client(base_url=api_process, headers=headers, timeout=30) as http:
            job = http.post("/v1/jobs", content=orjson.dumps({"request": body}))
            batch = http.post("/v1/messages/batches", content=orjson.dumps(batch_body))
        for answer in (job, batch):
            seen.append(answer.status_code)
            assert answer.status_code < 500, answer.text
            if answer.status_code >= 400:
                assert answer.json()["type"] == "error", answer.text

    check()
    assert len(seen) >= 120
