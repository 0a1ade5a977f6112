"""A job's anthropic-version and betas, end to end: the official SDK against msgq's API, the
Client, the worker's calls as the simulator logs them, and the batch lane's pooling."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import pytest
from redis.asyncio import Redis

from msgq.client import Client
from msgq.settings import Settings
from msgq.tenancy.policy import publish as publish_policy
from schemas import JobStatus, Lane
from tests.conftest import KEY_A, KEYS, SAMPLES, Sim, StartWorker, eventually

TEXT = json.loads((SAMPLES / "requests" / "text.json").read_text())
WARM = {**TEXT, "temperature": 0.5}
V2023, V2026 = "2023-06-01", "2026-10-21"


async def ended(sdk: anthropic.AsyncAnthropic, batch_id: str) -> Any:
    seen: dict[str, Any] = {}

    async def check() -> bool:
        seen["b"] = await sdk.messages.batches.retrieve(batch_id)
        return bool(seen["b"].processing_status == "ended")

    await eventually(check, timeout_s=30)
    return seen["b"]


async def test_sdk_2026_batch_with_temperature_is_refused_naming_it(
    api_server: str, sim: Sim
) -> None:
    """The SDK's default version (2026-10-21) with temperature: 400 naming it, nothing queued."""
    async with anthropic.AsyncAnthropic(base_url=api_server, api_key=KEY_A) as sdk:
        with pytest.raises(anthropic.BadRequestError) as refused:
            await sdk.messages.batches.create(requests=[{"custom_id": "a", "params": WARM}])
        page = await sdk.messages.batches.list()
    assert refused.value.status_code == 400
    assert "requests.0.params.temperature" in str(refused.value)
    assert refused.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert page.data == [] and sim.received == 0


async def test_sdk_2023_batch_with_temperature_runs_under_2023(
    api_server: str, settings: Settings, sim: Sim, start_worker: StartWorker
) -> None:
    """Under 2023-06-01 it succeeds, and is sent as 2023-06-01 even where the fleet's default
    is 2026-10-21 (which the simulator would refuse it under)."""
    await start_worker(settings.model_copy(update={"anthropic_version": V2026}))
    headers = {"anthropic-version": V2023}
    async with anthropic.AsyncAnthropic(
        base_url=api_server, api_key=KEY_A, default_headers=headers
    ) as sdk:
        batch = await sdk.messages.batches.create(requests=[{"custom_id": "a", "params": WARM}])
        done = await ended(sdk, batch.id)
    assert done.request_counts.succeeded == 1
    [call] = sim.requests()
    assert call["headers"]["anthropic-version"] == V2023 and call["body"]["temperature"] == 0.5


async def test_sdk_betas_and_workspace_reach_the_api(
    api_server: str, settings: Settings, sim: Sim, start_worker: StartWorker
) -> None:
    """`betas=[...]` and `workspace_id` on a batch reach every call made for it; the fleet's
    own beta is only for jobs that name none."""
    await start_worker(settings.model_copy(update={"anthropic_beta": "fleet-beta-2020-01-01"}))
    betas = ["context-1m-2025-08-07", "files-api-2025-04-14"]
    async with anthropic.AsyncAnthropic(base_url=api_server, api_key=KEY_A) as sdk:
        batch = await sdk.beta.messages.batches.create(
            requests=[{"custom_id": "a", "params": TEXT}], betas=betas, workspace_id="wrkspc_1"
        )
        done = await ended(sdk, batch.id)
    assert done.request_counts.succeeded == 1
    [call] = sim.requests()
    assert call["betas"] == betas
    assert call["headers"]["anthropic-version"] == V2026
    assert call["headers"]["anthropic-workspace-id"] == "wrkspc_1"


async def test_jobs_without_a_version_get_the_fleets_other_routes_require_one(
    api_settings: Settings, redis: Redis
) -> None:
    """No anthropic-version: `/v1/jobs` (msgq's own route) records the version the workers
    published as the fleet's default; the Batches and drop-in routes answer 400 in the API's
    shape; repeated anthropic-beta headers are merged; the record keeps version and betas."""
    from msgq.http.app import create_app

    # The workers send 2026-10-21 to jobs naming none; this API process's own default differs.
    await publish_policy(redis, api_settings.model_copy(update={"anthropic_version": V2026}))
    strict = api_settings.model_copy(update={"http_anthropic_version_default": None})
    app = create_app(strict)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://msgq.test",
            headers={"x-api-key": KEY_A},
        ) as http,
    ):
        defaulted = await http.post("/v1/jobs", json={"request": TEXT})
        batch = await http.post(
            "/v1/messages/batches", json={"requests": [{"custom_id": "a", "params": TEXT}]}
        )
        dropin = await http.post("/v1/messages", json=TEXT)
        unknown = await http.post(
            "/v1/jobs", json={"request": TEXT}, headers={"anthropic-version": "2024-01-01"}
        )
        headers = [
            ("anthropic-version", V2023),
            ("anthropic-beta", "b-one-2025-01-01, b-two-2025-01-01"),
            ("anthropic-beta", "b-three-2025-01-01"),
        ]
        made = await http.post("/v1/jobs", json={"request": TEXT}, headers=headers)
    assert defaulted.status_code == 202, defaulted.text
    assert defaulted.json()["anthropic_version"] == V2026
    for answer in (batch, dropin):
        assert answer.status_code == 400
        assert answer.json()["error"] == {
            "type": "invalid_request_error",
            "message": "anthropic-version: header is required",
        }
    assert unknown.status_code == 400 and "2024-01-01" in unknown.json()["error"]["message"]
    assert made.status_code == 202
    record = made.json()
    assert record["anthropic_version"] == V2023
    assert record["betas"] == ["b-one-2025-01-01", "b-two-2025-01-01", "b-three-2025-01-01"]


async def test_http_json_fields_name_the_version_and_its_rules_apply(
    api: httpx.AsyncClient,
) -> None:
    """`anthropic_version` in the body beats the header, and its rules are checked up front."""
    refused = await api.post(
        "/v1/jobs",
        json={"request": WARM, "anthropic_version": V2026},
        headers={"anthropic-version": V2023},
    )
    assert refused.status_code == 422
    [error] = refused.json()["error"]["errors"]
    assert error["loc"] == "temperature" and "Extra inputs are not permitted" in error["msg"]
    made = await api.post(
        "/v1/jobs", json={"request": WARM, "anthropic_version": V2023, "betas": ["x-2025-01-01"]}
    )
    assert made.status_code == 202
    assert made.json()["anthropic_version"] == V2023 and made.json()["betas"] == ["x-2025-01-01"]


async def test_client_jobs_send_their_own_version_and_betas(
    client: Client, settings: Settings, sim: Sim, start_worker: StartWorker
) -> None:
    """Client.submit(anthropic_version=, betas=) is what the call sends; a job naming none
    gets the fleet's settings."""
    fleet = {"anthropic_version": V2023, "anthropic_beta": "fleet-beta-2020-01-01"}
    await start_worker(settings.model_copy(update=fleet))
    own = await client.submit(
        TEXT, job_id="own", anthropic_version=V2026, betas=["own-beta-2025-01-01"]
    )
    plain = await client.submit(TEXT, job_id="plain")
    for job in (own, plain):
        assert (await client.wait(job.id, timeout=15)).status is JobStatus.SUCCEEDED
    record = await client.get("own")
    assert record.anthropic_version == V2026 and record.betas == ["own-beta-2025-01-01"]
    calls = sorted(sim.requests(), key=lambda c: c["headers"]["anthropic-version"])
    assert [c["headers"]["anthropic-version"] for c in calls] == [V2023, V2026]
    assert [c["betas"] for c in calls] == [["fleet-beta-2020-01-01"], ["own-beta-2025-01-01"]]


async def test_client_refuses_what_the_version_refuses(client: Client) -> None:
    """Client.submit under 2026-10-21 refuses top_k (even at a value 2023-06-01 accepts)."""
    from msgq.errors import InvalidJobError

    with pytest.raises(InvalidJobError) as refused:
        await client.submit({**TEXT, "top_k": 5}, anthropic_version=V2026)
    assert refused.value.errors[0]["loc"] == "top_k"
    assert (await client.submit({**TEXT, "top_k": 5}, anthropic_version=V2023)).created


async def test_batch_lane_pools_only_jobs_with_the_same_version_and_betas(
    client: Client, settings: Settings, sim: Sim, start_worker: StartWorker
) -> None:
    """Two versions and two sets of betas: one upstream batch each, each sent with its own."""
    lane = {"batch_max_wait_s": 0.3, "batch_poll_s": 0.2, "batch_poll_max_s": 0.5}
    await start_worker(settings.model_copy(update=lane))
    kinds = [(V2023, None), (V2026, ["a-2025-01-01"]), (V2026, ["b-2025-01-01"])]
    ids = []
    for n, (version, betas) in enumerate(kinds * 2):
        job = await client.submit(
            {**TEXT, "max_tokens": 100 + n},
            lane=Lane.BATCH,
            anthropic_version=version,
            betas=betas,
        )
        ids.append(job.id)
    for job_id in ids:
        assert (await client.wait(job_id, timeout=30)).status is JobStatus.SUCCEEDED
    batches = sim.http.get("/_sim/batches").json()["data"]
    seen = sorted(
        (b["anthropic_version"], tuple(b["betas"]), len(b["custom_ids"])) for b in batches
    )
    groups = {(v, tuple(b)) for v, b, _ in seen}
    assert groups == {(V2023, ()), (V2026, ("a-2025-01-01",)), (V2026, ("b-2025-01-01",))}
    assert sum(n for _, _, n in seen) == 6


async def test_raw_redis_job_names_its_version_and_betas(
    redis: Any, client: Client, settings: Settings, sim: Sim, start_worker: StartWorker
) -> None:
    """`k.anthropic_version` and `k.betas` in a job written with plain Redis commands are sent."""
    import time

    now = int(time.time() * 1000)
    k = {"request": TEXT, "anthropic_version": V2026, "betas": ["raw-beta-2025-01-01"]}
    job = {"t": 1, "f": "run_message", "a": [], "et": now, "k": k}
    await redis.set(KEYS.arq_job_key("raw-1"), json.dumps(job))
    await redis.zadd(settings.keys.for_job("raw-1").queue, {"raw-1": now})
    await start_worker()

    async def done() -> bool:
        found = await client.list(limit=10)
        return any(r.id == "raw-1" and r.status.terminal for r in found)

    await eventually(done)
    record = await client.get("raw-1")
    assert record.status is JobStatus.SUCCEEDED and record.anthropic_version == V2026
    [call] = sim.requests()
    assert call["headers"]["anthropic-version"] == V2026
    assert call["betas"] == ["raw-beta-2025-01-01"]


async def test_http_carries_every_other_anthropic_header_and_refuses_malformed_ones(
    api: httpx.AsyncClient,
) -> None:
    """POST /v1/jobs and a batch's jobs keep every other anthropic-* header (not the caller's
    key); a malformed name is refused in the API's shape on all three routes, never a 500."""
    sent = {"anthropic-user-profile-id": "uprof_1", "anthropic-next-thing": "on"}
    made = await api.post("/v1/jobs", json={"request": TEXT}, headers=sent)
    assert made.status_code == 202, made.text
    assert made.json()["api_headers"] == sent
    batch = await api.post(
        "/v1/messages/batches",
        json={"requests": [{"custom_id": "a", "params": TEXT}]},
        headers=sent,
    )
    assert batch.status_code == 200, batch.text
    bad = {"anthropic-bad_name": "x"}
    refused = [
        await api.post("/v1/jobs", json={"request": TEXT}, headers=bad),
        await api.post("/v1/messages", json=TEXT, headers=bad),
        await api.post(
            "/v1/messages/batches",
            json={"requests": [{"custom_id": "a", "params": TEXT}]},
            headers=bad,
        ),
    ]
    assert [r.status_code for r in refused] == [422, 400, 400], [r.text for r in refused]
    assert all(r.json()["type"] == "error" for r in refused)
