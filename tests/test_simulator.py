"""The simulator speaks the API's shapes: the official SDK parses them; errors match exactly."""

from __future__ import annotations

import anthropic
import httpx
import pytest

from tests.conftest import Sim
from tests.images import image_block, image_bytes

KEY = "sk-ant-sim-test-key-123456"
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}


def body(**extra: object) -> dict[str, object]:
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": "Say something long enough to stop."}],
        **extra,
    }


async def test_official_sdk_parses_messages_and_errors(sim: Sim) -> None:
    """AsyncAnthropic(base_url=simulator) gets a typed Message, and typed errors."""
    async with anthropic.AsyncAnthropic(base_url=sim.url, api_key=KEY, max_retries=0) as sdk:
        message = await sdk.messages.create(
            model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "Hello"}]
        )
        assert message.type == "message" and message.stop_reason == "end_turn"
        assert message.content[0].type == "text" and message.usage.output_tokens > 0
        assert message._request_id and message._request_id.startswith("req_sim")
        sim.script({"status": 529, "message": "busy"})
        with pytest.raises(anthropic.InternalServerError) as info:
            await sdk.messages.create(
                model="claude-haiku-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
        assert info.value.status_code == 529 and info.value.request_id
        counted = await sdk.messages.count_tokens(
            model="claude-haiku-4-5", messages=[{"role": "user", "content": "x" * 40}]
        )
        assert counted.input_tokens == 10
    assert sim.stats()["by_status"] == {"200": 1, "529": 1}


def test_answers_are_deterministic_and_honour_stop_sequences(sim: Sim) -> None:
    """Same request, same text; a stop sequence cuts the text with the right stop_reason."""
    first = httpx.post(f"{sim.url}/v1/messages", json=body(), headers=HEADERS).json()
    second = httpx.post(f"{sim.url}/v1/messages", json=body(), headers=HEADERS).json()
    assert first["content"] == second["content"] and first["usage"] == second["usage"]
    text = first["content"][0]["text"]
    cut = httpx.post(
        f"{sim.url}/v1/messages", json=body(stop_sequences=["Also"]), headers=HEADERS
    ).json()
    assert cut["stop_reason"] == "stop_sequence" and cut["stop_sequence"] == "Also"
    assert cut["content"][0]["text"] == text[: text.index("Also")]
    short = httpx.post(f"{sim.url}/v1/messages", json=body(max_tokens=3), headers=HEADERS).json()
    assert short["stop_reason"] == "max_tokens" and short["usage"]["output_tokens"] == 3


def test_image_tokens_follow_the_tier_resize(sim: Sim) -> None:
    """Usage counts ceil(w/28)*ceil(h/28) after resize; the text describes the pixels."""
    raw = image_bytes("JPEG", (3000, 2000), (40, 80, 200))
    content = [image_block(raw, "image/jpeg")]
    answer = httpx.post(
        f"{sim.url}/v1/messages",
        headers=HEADERS,
        timeout=30,
        json=body(messages=[{"role": "user", "content": content}]),
    ).json()
    assert answer["content"][0]["text"] == "A 3000x2000 JPEG image, mostly blue."
    assert 1500 <= answer["usage"]["input_tokens"] <= 1568


@pytest.mark.parametrize(
    ("headers", "payload", "status", "error_type"),
    [
        ({"anthropic-version": "2023-06-01"}, body(), 401, "authentication_error"),
        ({"x-api-key": KEY}, body(), 400, "invalid_request_error"),
        (HEADERS, {"model": "claude-haiku-4-5"}, 400, "invalid_request_error"),
    ],
    ids=["no-key", "no-version", "invalid-body"],
)
def test_errors_have_the_api_shape(
    sim: Sim, headers: dict[str, str], payload: object, status: int, error_type: str
) -> None:
    """Errors are {type: error, error: {type, message}, request_id} with a request-id header."""
    response = httpx.post(f"{sim.url}/v1/messages", json=payload, headers=headers)
    data = response.json()
    assert response.status_code == status
    assert data["type"] == "error" and data["error"]["type"] == error_type
    assert data["request_id"] == response.headers["request-id"]


def test_request_log_masks_the_key(sim: Sim) -> None:
    """/_sim/requests shows headers with the key masked and the body as received."""
    httpx.post(f"{sim.url}/v1/messages", json=body(), headers=HEADERS)
    (entry,) = sim.requests()
    assert entry["headers"]["x-api-key"] != KEY and KEY not in str(entry)
    assert entry["body"] == body() and entry["status"] == 200


def test_scripts_are_per_key(sim: Sim) -> None:
    """A script queued for one key does not hit another key's requests."""
    sim.script({"status": 503}, key="sk-ant-other-key-0000")
    ok = httpx.post(f"{sim.url}/v1/messages", json=body(), headers=HEADERS)
    other = httpx.post(
        f"{sim.url}/v1/messages",
        json=body(),
        headers={**HEADERS, "x-api-key": "sk-ant-other-key-0000"},
    )
    assert (ok.status_code, other.status_code) == (200, 503)


async def test_reset_forgets_requests_still_held(sim: Sim) -> None:
    """A held request finishing after a reset does not count in the new test's stats."""
    import asyncio

    from tests.conftest import eventually

    sim.script({"delay_s": 1.0})
    async with httpx.AsyncClient(timeout=10) as http:
        held = asyncio.create_task(
            http.post(f"{sim.url}/v1/messages", json=body(), headers=HEADERS)
        )

        async def arrived() -> bool:
            return sim.received == 1

        await eventually(arrived)
        sim.reset()
        assert (await held).status_code == 200
    assert sim.stats()["by_status"] == {}


@pytest.mark.parametrize(
    ("payload", "status", "error_type", "message"),
    [
        (body(model="gpt-4o"), 404, "not_found_error", "model: gpt-4o"),
        (body(temprature=0.5), 400, "invalid_request_error", "temprature: Extra inputs"),
        (
            {k: v for k, v in body().items() if k != "max_tokens"},
            400,
            "invalid_request_error",
            "max_tokens: Field required",
        ),
        (body(model="claude-future-9"), 200, None, None),
    ],
    ids=["unknown-model", "unknown-parameter", "missing-field", "newer-claude"],
)
def test_refuses_what_the_api_refuses(
    sim: Sim, payload: dict[str, object], status: int, error_type: str | None, message: str | None
) -> None:
    """An unknown model is 404, an unknown parameter 400, each named as the API names it; a
    claude- id newer than the capabilities table is served. msgq itself passes unknown
    parameters through (the API is their judge)."""
    from schemas import validate_request

    response = httpx.post(f"{sim.url}/v1/messages", json=payload, headers=HEADERS)
    assert response.status_code == status
    if error_type is not None:
        assert response.json()["error"]["type"] == error_type
        assert str(message) in response.json()["error"]["message"]
    validate_request(body(temprature=0.5))
