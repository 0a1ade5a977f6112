"""The simulator speaks both API versions, both ways of sending the key, and the Models API the
official SDK parses (reference §12)."""

from __future__ import annotations

import tomllib
from importlib import resources
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from anthropic.types import ModelInfo
from pydantic import BaseModel

from tests.conftest import Sim

KEY = "sk-ant-versions-test-key-123456"
V2023 = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
V2026 = {"x-api-key": KEY, "anthropic-version": "2026-10-21"}


def body(**extra: object) -> dict[str, object]:
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "Hello"}],
        **extra,
    }


def post(sim: Sim, payload: object, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{sim.url}/v1/messages", json=payload, headers=headers, timeout=10)


def assert_api_error(response: httpx.Response, status: int, error_type: str, says: str) -> None:
    data = response.json()
    assert response.status_code == status
    assert set(data) == {"type", "error", "request_id"} and data["type"] == "error"
    assert data["error"]["type"] == error_type and says in data["error"]["message"]
    assert data["request_id"] == response.headers["request-id"]


@pytest.mark.parametrize("field", ["temperature", "top_p", "top_k"])
def test_2026_10_21_refuses_sampling_parameters_even_at_defaults(sim: Sim, field: str) -> None:
    """Under 2026-10-21 any of temperature/top_p/top_k is a 400 naming the field."""
    value = 1.0 if field != "top_k" else 5
    response = post(sim, body(**{field: value}), V2026)
    assert_api_error(response, 400, "invalid_request_error", field)
    assert post(sim, body(), V2026).status_code == 200


def test_2023_06_01_keeps_accepting_temperature(sim: Sim) -> None:
    """The old version's rules are unchanged: temperature on Haiku 4.5 is fine."""
    assert post(sim, body(temperature=0.2), V2023).status_code == 200


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ({"x-api-key": KEY, "anthropic-version": "2024-01-01"}, "2024-01-01"),
        ({"x-api-key": KEY}, "anthropic-version"),
    ],
    ids=["unknown-version", "missing-version"],
)
def test_unknown_or_missing_version_is_a_400(sim: Sim, headers: dict[str, str], says: str) -> None:
    """Only 2023-06-01 and 2026-10-21 exist; anything else, or nothing, is refused."""
    assert_api_error(post(sim, body(), headers), 400, "invalid_request_error", says)
    tokens = httpx.post(f"{sim.url}/v1/messages/count_tokens", json=body(), headers=headers)
    assert tokens.status_code == 400


def cited_text() -> dict[str, Any]:
    citation = {
        "type": "char_location",
        "cited_text": "x",
        "document_index": 0,
        "start_char_index": 0,
        "end_char_index": 1,
    }
    return {"type": "text", "text": "x", "citations": [citation]}


DOCUMENT = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "d"}}


@pytest.mark.parametrize(
    ("messages", "says"),
    [
        (
            [
                {"role": "user", "content": "Read this."},
                {"role": "assistant", "content": [DOCUMENT]},
                {"role": "user", "content": "Thanks."},
            ],
            "messages.1.content.0",
        ),
        ([{"role": "user", "content": [cited_text()]}], "messages.0.content.0.citations"),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Look:"},
                        {
                            "type": "search_result",
                            "source": "https://example.com",
                            "title": "t",
                            "content": [{"type": "text", "text": "plain"}, cited_text()],
                        },
                    ],
                }
            ],
            "messages.0.content.1.content.1.citations",
        ),
    ],
    ids=["document-in-assistant", "citations-in-user-text", "citations-in-search-result"],
)
def test_2026_10_21_refuses_the_removed_block_placements(
    sim: Sim, messages: list[dict[str, Any]], says: str
) -> None:
    """A document block in an assistant turn, or a cited text block in a user turn (directly
    or in a search_result), is a 400 under 2026-10-21 that names where."""
    response = post(sim, body(messages=messages), V2026)
    assert_api_error(response, 400, "invalid_request_error", says)
    old = post(sim, body(messages=messages), V2023)
    assert says not in old.text  # whatever 2023-06-01 says, it is not this rule


def test_bearer_key_is_accepted_masked_in_the_log_and_betas_are_recorded(sim: Sim) -> None:
    """Authorization: Bearer works as the key (SDK 2.x); the log masks it and lists every
    anthropic-beta, repeated headers and comma-separated names alike."""
    headers = [
        ("authorization", f"Bearer {KEY}"),
        ("anthropic-version", "2026-10-21"),
        ("anthropic-beta", "files-api-2025-04-14,context-1m-2025-08-07"),
        ("anthropic-beta", "output-300k-2026-03-24"),
    ]
    response = httpx.post(f"{sim.url}/v1/messages", json=body(), headers=headers)
    assert response.status_code == 200
    (entry,) = sim.requests()
    assert KEY not in str(entry) and entry["headers"]["authorization"].startswith("Bearer ")
    assert entry["betas"] == [
        "files-api-2025-04-14",
        "context-1m-2025-08-07",
        "output-300k-2026-03-24",
    ]
    no_key = {"authorization": "Basic abc", "anthropic-version": "2026-10-21"}
    assert post(sim, body(), no_key).status_code == 401


def test_x_api_key_wins_over_bearer(sim: Sim) -> None:
    """With both, the API uses x-api-key: the script queued for that key answers."""
    sim.script({"status": 503}, key="sk-ant-the-x-api-key-000")
    headers = {
        "x-api-key": "sk-ant-the-x-api-key-000",
        "authorization": "Bearer sk-ant-the-bearer-key-000",
        "anthropic-version": "2023-06-01",
    }
    assert post(sim, body(), headers).status_code == 503


async def test_official_sdk_defaults_to_2026_10_21_and_gets_the_400(sim: Sim) -> None:
    """The installed SDK (Bearer, 2026-10-21) is told temperature is not permitted."""
    async with anthropic.AsyncAnthropic(base_url=sim.url, api_key=KEY, max_retries=0) as sdk:
        with pytest.raises(anthropic.BadRequestError) as info:
            await sdk.messages.create(**body(), extra_body={"temperature": 0.5})  # type: ignore[arg-type]
    assert "temperature" in str(info.value)
    (entry,) = sim.requests()
    assert entry["headers"]["anthropic-version"] == "2026-10-21"
    assert "x-api-key" not in entry["headers"] and "authorization" in entry["headers"]


def served_ids() -> list[str]:
    """Active and deprecated models of the simulator's table, newest first."""
    text = resources.files("msgq.dev.simulator").joinpath("models.toml").read_text()
    rows = tomllib.loads(text)["models"]
    listed = [r for r in rows if r.get("lifecycle", "active") in ("active", "deprecated")]
    return [r["id"] for r in sorted(listed, key=lambda r: r["created_at"], reverse=True)]


def assert_every_field(raw: dict[str, Any], model: type[BaseModel], where: str) -> None:
    """The raw JSON carries every field the SDK's model declares, nested models included."""
    for name, field in model.model_fields.items():
        assert name in raw, f"{where}.{name} missing"
        inner = field.annotation
        if isinstance(inner, type) and issubclass(inner, BaseModel) and raw[name] is not None:
            assert_every_field(raw[name], inner, f"{where}.{name}")
        for arg in getattr(inner, "__args__", ()):  # Optional[Model]
            if isinstance(arg, type) and issubclass(arg, BaseModel) and raw[name] is not None:
                assert_every_field(raw[name], arg, f"{where}.{name}")


async def test_sdk_lists_every_model_through_pages_and_retrieves_by_alias(sim: Sim) -> None:
    """client.models.list(limit=4) pages through every model, newest first; retrieve resolves
    an alias and parses capabilities; an unknown id is a typed 404."""
    async with anthropic.AsyncAnthropic(base_url=sim.url, api_key=KEY, max_retries=0) as sdk:
        first = await sdk.models.list(limit=4)
        assert len(first.data) == 4 and first.has_more
        listed = [m async for m in first]
        model = await sdk.models.retrieve("claude-haiku-4-5")
        with pytest.raises(anthropic.NotFoundError) as info:
            await sdk.models.retrieve("claude-nope-1")
    assert [m.id for m in listed] == served_ids() and len(listed) > 15
    assert all(isinstance(m, ModelInfo) and m.type == "model" for m in listed)
    assert [m.created_at for m in listed] == sorted((m.created_at for m in listed), reverse=True)
    assert {"claude-haiku-5-5", "claude-opus-5", "claude-sonnet-4-6"} <= {m.id for m in listed}
    assert model.id == "claude-haiku-4-5-20251001" and model.max_input_tokens == 200_000
    assert model.capabilities is not None
    assert model.capabilities.thinking.types.enabled.supported
    assert not model.capabilities.effort.supported and model.created_at.tzinfo is not None
    assert info.value.status_code == 404 and info.value.type == "not_found_error"  # type: ignore[attr-defined]


def test_models_pages_and_shape_match_the_api(sim: Sim) -> None:
    """Raw pages: data/has_more/first_id/last_id, after_id and before_id cursors, limit
    bounds; every ModelInfo field (nested capabilities too) is present."""
    url, ids = f"{sim.url}/v1/models", served_ids()
    everything = httpx.get(url, headers=V2026).json()  # default limit 20 covers the table
    assert [m["id"] for m in everything["data"]] == ids and everything["has_more"] is False
    for raw in everything["data"]:
        assert_every_field(raw, ModelInfo, raw["id"])
    page = httpx.get(url, params={"limit": 3, "after_id": ids[2]}, headers=V2026).json()
    assert [m["id"] for m in page["data"]] == ids[3:6]
    assert (page["first_id"], page["last_id"], page["has_more"]) == (ids[3], ids[5], True)
    back = httpx.get(url, params={"limit": 3, "before_id": ids[3]}, headers=V2026).json()
    assert [m["id"] for m in back["data"]] == ids[0:3] and back["has_more"] is False
    back = httpx.get(url, params={"limit": 2, "before_id": ids[5]}, headers=V2026).json()
    assert [m["id"] for m in back["data"]] == ids[3:5] and back["has_more"] is True
    for limit in ("0", "1001"):
        bad = httpx.get(url, params={"limit": limit}, headers=V2026)
        assert_api_error(bad, 400, "invalid_request_error", "limit")
    assert httpx.get(url, params={"limit": 1000}, headers=V2026).status_code == 200
    missing = httpx.get(f"{url}/claude-nope-1", headers=V2023)
    assert_api_error(missing, 404, "not_found_error", "claude-nope-1")
    assert httpx.get(url, headers={"anthropic-version": "2023-06-01"}).status_code == 401


def test_a_batch_created_under_2026_10_21_errors_the_requests_that_break_its_rules(
    sim: Sim,
) -> None:
    """The create call's version applies to every request in the batch: the one carrying
    temperature ends errored, naming it; the other succeeds. Under 2023-06-01 both succeed."""
    sim.http.post("/_sim/batch-config", json={"processing_s": 0.0}).raise_for_status()
    requests = [
        {"custom_id": "sampled", "params": body(temperature=0.5)},
        {"custom_id": "plain", "params": body()},
    ]
    outcomes = {}
    for headers in (V2026, V2023):
        with httpx.Client(base_url=sim.url, headers=headers, timeout=10) as http:
            batch = http.post("/v1/messages/batches", json={"requests": requests}).json()
            results = http.get(f"/v1/messages/batches/{batch['id']}/results").text
        rows = [orjson.loads(line) for line in results.splitlines() if line]
        outcomes[headers["anthropic-version"]] = {r["custom_id"]: r["result"] for r in rows}
    new, old = outcomes["2026-10-21"], outcomes["2023-06-01"]
    assert new["plain"]["type"] == "succeeded" and new["sampled"]["type"] == "errored"
    error = new["sampled"]["error"]["error"]
    assert error["type"] == "invalid_request_error" and "temperature" in error["message"]
    assert {r["type"] for r in old.values()} == {"succeeded"}
