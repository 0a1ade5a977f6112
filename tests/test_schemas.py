"""Validation of Messages requests: the seed requests pass, model rules and bad images refuse."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from schemas import Message, capabilities_for, field_errors, summarize, validate_request
from tests.conftest import SAMPLES
from tests.images import b64, image_block, image_bytes


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def request(model: str = "claude-haiku-4-5", **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 100, "messages": [user("hi")], **extra}


def errors_of(body: dict[str, Any], **kwargs: Any) -> list[dict[str, str]]:
    with pytest.raises(ValidationError) as info:
        validate_request(body, **kwargs)
    return field_errors(info.value, body)


@pytest.mark.parametrize("name", ["text", "multi_turn", "prefill", "image_base64", "image_url"])
def test_seed_requests_validate(name: str) -> None:
    """Every sample request in the seed set validates."""
    body = json.loads((SAMPLES / "requests" / f"{name}.json").read_text())
    assert validate_request(body).model == body["model"]


@pytest.mark.parametrize(
    "model", ["claude-opus-4-7", "claude-opus-4-6", "claude-sonnet-4-6", "claude-mythos-preview"]
)
def test_prefill_refused_on_models_that_reject_it(model: str) -> None:
    """Assistant prefill on these models is refused before any call, naming the model."""
    body = request(model, messages=[user("hi"), {"role": "assistant", "content": "Sure"}])
    (error,) = errors_of(body)
    assert error["loc"] == "messages"
    assert model in error["msg"] and "prefill" in error["msg"]


def test_prefill_allowed_on_haiku_and_same_role_turns_legal() -> None:
    """Prefill works on Haiku 4.5; consecutive user turns are legal (the API merges them)."""
    validate_request(
        request(messages=[user("a"), user("b"), {"role": "assistant", "content": "x"}])
    )


def test_sampling_and_budget_thinking_refused_on_opus_4_7() -> None:
    """Opus 4.7 refuses non-default temperature/top_k and budget thinking; adaptive is fine."""
    assert errors_of(request("claude-opus-4-7", temperature=0.2))[0]["loc"] == "temperature"
    assert errors_of(request("claude-opus-4-7", top_k=5))[0]["loc"] == "top_k"
    thinking = {"type": "enabled", "budget_tokens": 2000}
    body = request("claude-opus-4-7", thinking=thinking, max_tokens=4000)
    assert errors_of(body)[0]["loc"] == "thinking"
    validate_request(request("claude-opus-4-7", temperature=1.0, thinking={"type": "adaptive"}))
    validate_request(request("claude-sonnet-4-5", thinking=thinking, max_tokens=4000))


def test_unknown_model_and_unknown_parameters_pass_through() -> None:
    """An unknown model gets permissive defaults; unknown top-level fields are kept."""
    body = request("claude-future-9", output_config={"effort": "high"})
    parsed = validate_request(body)
    assert parsed.model_extra == {"output_config": {"effort": "high"}}
    assert capabilities_for("claude-future-9").known is False


@pytest.mark.parametrize(
    ("raw", "media_type", "needle"),
    [
        (image_bytes("JPEG"), "image/png", "bytes are image/jpeg but media_type says image/png"),
        (b"definitely not an image", "image/png", "not a JPEG, PNG, GIF or WebP"),
        (b"", "image/png", "empty"),
    ],
)
def test_bad_base64_images_refused(raw: bytes, media_type: str, needle: str) -> None:
    """Mislabelled, non-image and empty payloads are refused with the reason."""
    (error,) = errors_of(request(messages=[user([image_block(raw, media_type)])]))
    assert needle in error["msg"]
    assert error["loc"] == "messages.0.content.0.source"


def test_invalid_base64_and_oversize_refused() -> None:
    """Undecodable base64, and images over the per-image limit, are refused."""
    bad = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "@@@"}}
    assert "not valid base64" in errors_of(request(messages=[user([bad])]))[0]["msg"]
    big = image_bytes("PNG", (64, 64)) + b"\0" * (5 * 1024 * 1024)
    assert "per-image limit" in errors_of(request(messages=[user([image_block(big)])]))[0]["msg"]
    small_limit = errors_of(
        request(messages=[user([image_block(image_bytes())])]), max_image_bytes=100
    )
    assert "limit is 100 bytes" in small_limit[0]["msg"]


def test_image_count_limits() -> None:
    """Over 100 images on a 200k model, or over 20 with a side over 2000 px, are refused."""
    tiny = image_block(image_bytes(size=(8, 8)))
    assert "at most 100" in errors_of(request(messages=[user([tiny] * 101)]))[0]["msg"]
    validate_request(request("claude-opus-4-7", messages=[user([tiny] * 101)]))
    wide = image_block(image_bytes(size=(2100, 10)))
    assert "2000 px" in errors_of(request(messages=[user([wide] + [tiny] * 20)]))[0]["msg"]
    validate_request(request(messages=[user([wide] + [tiny] * 19)]))


def test_field_errors_list_every_problem_without_input() -> None:
    """Every field error comes back with a readable path, and no input bytes are echoed."""
    body = {"model": "", "max_tokens": -1, "messages": [user([{"type": "txt"}])]}
    errors = errors_of(body)
    assert {e["loc"] for e in errors} == {"model", "max_tokens", "messages.0.content.0"}
    data = b64(image_bytes("JPEG"))
    body = request(
        messages=[
            user(
                [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": data},
                    }
                ]
            )
        ]
    )
    assert all(data not in json.dumps(e) for e in errors_of(body))


def test_max_tokens_zero_refused_only_in_batches() -> None:
    """max_tokens 0 (cache pre-warm) is legal for a job and illegal inside a batch."""
    validate_request(request(max_tokens=0))
    assert errors_of(request(max_tokens=0), in_batch=True)[0]["loc"] == "max_tokens"


def test_missing_fields_are_named() -> None:
    """A missing field's error names it (`max_token` typed for `max_tokens`), however deep."""
    body = {"model": "claude-haiku-4-5", "max_token": 5, "messages": [{"content": "x"}]}
    assert {e["loc"] for e in errors_of(body)} == {"max_tokens", "messages.0.role"}
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png"}}
    assert [e["loc"] for e in errors_of(request(messages=[user([image])]))] == [
        "messages.0.content.0.source.data"
    ]


def test_summary_names_each_field_once() -> None:
    """A model rule's message does not repeat the field the summary already puts first."""
    summary = summarize(errors_of(request(max_tokens=0), in_batch=True))
    assert summary == "max_tokens: 0 is not allowed inside a batch"


def test_response_model_keeps_unknown_fields() -> None:
    """New block types and usage fields survive parsing."""
    body = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [{"type": "hologram", "beam": 1}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 1, "output_tokens": 2, "brand_new": 3},
    }
    parsed = Message.model_validate(body)
    assert parsed.model_dump(exclude_none=True)["content"] == [{"type": "hologram", "beam": 1}]
    assert parsed.usage.model_extra == {"brand_new": 3}
