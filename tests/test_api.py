"""The HTTP API for other services: jobs, long-poll, cancel, tenants, limits and bad input."""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx

from msgq.connections import connect
from msgq.settings import Settings
from tests.conftest import KEY_B, SAMPLES, Sim, StartWorker, eventually, zcard_parts

BODY = json.loads((SAMPLES / "requests" / "text.json").read_text())


async def queue_length(http: httpx.AsyncClient, settings: Settings) -> int:
    """Jobs waiting anywhere: arq's queue, or the fair-share scheduler's queues."""

    from tests.conftest import KEYS

    async with connect(settings.redis_url) as redis:
        return int(await zcard_parts(redis, lambda k: k.queue)) + int(
            await redis.hlen(KEYS.sched_where)
        )


async def test_create_poll_and_long_poll(
    api: httpx.AsyncClient, sim: Sim, start_worker: StartWorker
) -> None:
    """POST → 202 record; ?wait returns as soon as the job ends, with the result."""
    created = await api.post("/v1/jobs", json={"request": BODY, "id": "a1", "metadata": {"k": "v"}})
    assert created.status_code == 202
    assert created.json()["id"] == "a1" and created.json()["status"] == "queued"
    assert "tenant" not in created.json()
    again = await api.post("/v1/jobs", json={"request": BODY, "id": "a1"})
    assert again.status_code == 200 and again.json()["id"] == "a1"
    await start_worker()
    done = await api.get("/v1/jobs/a1", params={"wait": 30})
    assert done.json()["status"] == "succeeded" and done.json()["result"]["type"] == "message"
    assert sim.received == 1


async def test_long_poll_times_out_with_current_record(api: httpx.AsyncClient) -> None:
    """With no worker, ?wait=0.3 answers after the timeout with the queued record."""
    await api.post("/v1/jobs", json={"request": BODY, "id": "slow"})
    started = time.monotonic()
    response = await api.get("/v1/jobs/slow", params={"wait": 0.3})
    waited_s = time.monotonic() - started
    assert response.status_code == 200 and response.json()["status"] == "queued"
    assert waited_s >= 0.3  # it waited: an ignored ?wait would answer at once


async def test_cancel_and_list_with_paging(api: httpx.AsyncClient, settings: Settings) -> None:
    """DELETE cancels; GET /v1/jobs lists newest first, filters by status, and pages."""
    for i in range(5):
        await api.post("/v1/jobs", json={"request": BODY, "id": f"j{i}"})
    canceled = await api.delete("/v1/jobs/j1")
    assert canceled.json()["status"] == "canceled"
    page1 = (await api.get("/v1/jobs", params={"limit": 2})).json()
    assert [j["id"] for j in page1["data"]] == ["j4", "j3"] and page1["has_more"]
    page2 = (await api.get("/v1/jobs", params={"limit": 2, "after_id": page1["last_id"]})).json()
    assert [j["id"] for j in page2["data"]] == ["j2", "j1"]
    page3 = (await api.get("/v1/jobs", params={"limit": 2, "after_id": page2["last_id"]})).json()
    assert [j["id"] for j in page3["data"]] == ["j0"] and not page3["has_more"]
    failed = (await api.get("/v1/jobs", params={"status": "canceled"})).json()
    assert [j["id"] for j in failed["data"]] == ["j1"]
    assert await queue_length(api, settings) == 4


async def test_tenant_isolation(api: httpx.AsyncClient) -> None:
    """Tenant B gets 404 for tenant A's job and batch, cannot cancel them, lists none."""
    await api.post("/v1/jobs", json={"request": BODY, "id": "secret"})
    batch = (
        await api.post(
            "/v1/messages/batches", json={"requests": [{"custom_id": "c1", "params": BODY}]}
        )
    ).json()
    b = {"x-api-key": KEY_B}
    assert (await api.get("/v1/jobs/secret", headers=b)).status_code == 404
    assert (await api.delete("/v1/jobs/secret", headers=b)).status_code == 404
    assert (await api.get(f"/v1/messages/batches/{batch['id']}", headers=b)).status_code == 404
    cancel = await api.post(f"/v1/messages/batches/{batch['id']}/cancel", headers=b)
    assert cancel.status_code == 404
    assert (await api.get("/v1/jobs", headers=b)).json()["data"] == []
    assert (await api.get("/v1/messages/batches", headers=b)).json()["data"] == []
    mine = await api.get("/v1/jobs/secret")
    assert mine.json()["status"] == "queued"
    same_id = await api.post("/v1/jobs", headers=b, json={"request": BODY, "id": "secret"})
    assert same_id.status_code == 202  # B's "secret" is its own job


async def test_bad_input_enqueues_nothing(api: httpx.AsyncClient, settings: Settings) -> None:
    """401, 413, 400 and 422 each answer in the API's error shape; the queue stays empty."""
    no_key = await api.post("/v1/jobs", json={"request": BODY}, headers={"x-api-key": ""})
    wrong = await api.post("/v1/jobs", json={"request": BODY}, headers={"x-api-key": "nope"})
    bearer = await api.get(
        "/v1/jobs", headers={"x-api-key": "", "authorization": "Bearer key-a-0123456789"}
    )
    assert (no_key.status_code, wrong.status_code, bearer.status_code) == (401, 401, 200)
    assert wrong.json()["error"]["type"] == "authentication_error"
    huge = await api.post(
        "/v1/jobs",
        content=b"{" + b" " * (32 * 1024 * 1024) + b"}",
        headers={"content-type": "application/json"},
    )
    assert huge.status_code == 413 and huge.json()["error"]["type"] == "request_too_large"
    bad_json = await api.post(
        "/v1/jobs", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 400 and bad_json.json()["type"] == "error"
    prefill = {
        **BODY,
        "model": "claude-opus-4-7",
        "messages": [*BODY["messages"], {"role": "assistant", "content": "x"}],
    }
    invalid = await api.post("/v1/jobs", json={"request": prefill})
    assert invalid.status_code == 422
    assert invalid.json()["error"]["errors"][0]["loc"] == "messages"
    shape = await api.post("/v1/jobs", json={"request": {**BODY, "max_tokens": -1}})
    assert shape.json()["error"]["errors"][0]["loc"] == "max_tokens"
    big_int = await api.post(
        "/v1/jobs",
        headers={"content-type": "application/json"},
        content=json.dumps({"request": {**BODY, "max_tokens": 10**30}}),
    )
    assert big_int.status_code == 422  # JSON integers beyond 64 bits cannot be queued portably
    bad_id = await api.post("/v1/jobs", json={"request": BODY, "id": "../x"})
    assert bad_id.status_code == 422 and bad_id.json()["error"]["errors"][0]["loc"] == "id"
    assert await queue_length(api, settings) == 0


async def test_reusing_an_id_for_another_request_is_a_conflict(
    api: httpx.AsyncClient, settings: Settings
) -> None:
    """The same id and request is idempotent (200); another request under it answers 409."""
    assert (await api.post("/v1/jobs", json={"request": BODY, "id": "o1"})).status_code == 202
    reordered = dict(reversed(list(BODY.items())))
    same = await api.post("/v1/jobs", json={"request": reordered, "id": "o1"})
    assert same.status_code == 200  # key order is not a difference
    other = await api.post("/v1/jobs", json={"request": {**BODY, "max_tokens": 7}, "id": "o1"})
    assert other.status_code == 409
    assert other.json()["error"]["type"] == "conflict_error"
    assert "'o1'" in other.json()["error"]["message"]
    assert await queue_length(api, settings) == 1


async def test_cancel_tells_an_ended_job_apart(
    api: httpx.AsyncClient, sim: Sim, start_worker: StartWorker
) -> None:
    """DELETE of a queued job says canceled; of a finished one, already-ended (both 200)."""
    await api.post("/v1/jobs", json={"request": BODY, "id": "q1"})
    queued = await api.delete("/v1/jobs/q1")
    assert queued.status_code == 200 and queued.headers["msgq-cancel"] == "canceled"
    await api.post("/v1/jobs", json={"request": BODY, "id": "d1"})
    await start_worker()
    await api.get("/v1/jobs/d1", params={"wait": 30})
    ended = await api.delete("/v1/jobs/d1")
    assert ended.status_code == 200 and ended.json()["status"] == "succeeded"
    assert ended.headers["msgq-cancel"] == "already-ended"


async def test_a_missing_field_is_named(api: httpx.AsyncClient) -> None:
    """`max_token` typed for `max_tokens`: the 422 names max_tokens, not the whole request."""
    body = {k: v for k, v in BODY.items() if k != "max_tokens"} | {"max_token": 5}
    answer = await api.post("/v1/jobs", json={"request": body})
    assert answer.status_code == 422
    assert [e["loc"] for e in answer.json()["error"]["errors"]] == ["max_tokens"]


async def test_health_and_metrics_need_no_key(
    api: httpx.AsyncClient, start_worker: StartWorker
) -> None:
    """/healthz reports Redis and recent workers; /metrics is Prometheus text, key-free."""
    anonymous = {"x-api-key": ""}
    before = (await api.get("/healthz", headers=anonymous)).json()
    assert before == {"status": "degraded", "redis": True, "workers": False}
    await start_worker()

    async def healthy() -> bool:
        return bool((await api.get("/healthz", headers=anonymous)).json()["workers"])

    await eventually(healthy)
    metrics = await api.get("/metrics", headers=anonymous)
    assert metrics.status_code == 200 and "msgq_queue_depth" in metrics.text
    assert "key-a" not in metrics.text


async def test_batch_limits_and_custom_ids(api: httpx.AsyncClient, settings: Settings) -> None:
    """Duplicate or malformed custom_ids and empty batches are refused, nothing enqueued."""
    dup = await api.post(
        "/v1/messages/batches",
        json={"requests": [{"custom_id": "x", "params": BODY}, {"custom_id": "x", "params": BODY}]},
    )
    assert dup.status_code == 400 and "more than once" in dup.json()["error"]["message"]
    bad = await api.post(
        "/v1/messages/batches", json={"requests": [{"custom_id": "has space", "params": BODY}]}
    )
    assert bad.status_code == 400  # as the API answers (the SDK raises BadRequestError)
    empty = await api.post("/v1/messages/batches", json={"requests": []})
    assert empty.status_code == 400
    assert await queue_length(api, settings) == 0


async def test_batch_with_invalid_params_errors_that_request_only(
    api: httpx.AsyncClient, sim: Sim, start_worker: StartWorker
) -> None:
    """As the API does, params are checked per request: one `errored`, the rest succeed."""
    zero = {**BODY, "max_tokens": 0}
    batch = (
        await api.post(
            "/v1/messages/batches",
            json={
                "requests": [
                    {"custom_id": "ok", "params": BODY},
                    {"custom_id": "bad", "params": zero},
                ]
            },
        )
    ).json()
    await start_worker()

    async def ended() -> bool:
        view.update((await api.get(f"/v1/messages/batches/{batch['id']}")).json())
        return bool(view["processing_status"] == "ended")

    view: dict[str, Any] = {}
    await eventually(ended)
    assert view["request_counts"] == {
        "processing": 0,
        "succeeded": 1,
        "errored": 1,
        "canceled": 0,
        "expired": 0,
    }
    lines = (await api.get(f"/v1/messages/batches/{batch['id']}/results")).text.splitlines()
    results = {r["custom_id"]: r["result"] for r in map(json.loads, lines)}
    assert results["ok"]["type"] == "succeeded"
    assert results["bad"]["error"]["error"]["type"] == "invalid_request_error"
    message = results["bad"]["error"]["error"]["message"]
    assert "max_tokens: 0 is not allowed" in message and "max_tokens: max_tokens" not in message
    assert sim.received == 1


async def test_favicon_is_an_icon_not_a_404(api: httpx.AsyncClient) -> None:
    """Browsers ask /favicon.ico on every visit (the API's JSON pages too): an icon, with no
    key needed; the dashboard links the same one."""
    answer = await api.get("/favicon.ico", headers={"x-api-key": ""})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/x-icon"
    assert answer.content[:4] == b"\x00\x00\x01\x00"  # the ICO header
    assert (await api.get("/ui/static/favicon.ico")).content == answer.content


def test_no_route_dependency_runs_in_the_thread_pool(api_settings: Settings) -> None:
    """FastAPI runs a plain-function dependency in its thread pool: a thread hop on every
    request, for what is a few dictionary reads. Every route and its dependencies are coroutines."""
    from fastapi.dependencies.models import Dependant
    from fastapi.routing import APIRoute

    from msgq.http.app import create_app

    def calls(dependant: Dependant) -> Iterator[Any]:
        for dependency in dependant.dependencies:
            yield dependency.call
            yield from calls(dependency)

    def api_routes(routes: list[Any]) -> Iterator[APIRoute]:
        for route in routes:
            if isinstance(route, APIRoute):
                yield route
            inner = getattr(route, "original_router", route)  # an included router
            yield from api_routes(getattr(inner, "routes", []))

    routes = list(api_routes(create_app(api_settings).routes))
    sync = {
        f"{route.path}: {getattr(call, '__name__', call)}"
        for route in routes
        for call in (route.endpoint, *calls(route.dependant))
        if call is not None and not inspect.iscoroutinefunction(call)
    }
    assert routes and not sync, sorted(sync)
