"""Validation accepts what the API accepts (issue 10 items 8, 9): a false refusal costs more."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from pydantic import ValidationError

from msgq.jobs.records import new_record
from msgq.pricing import cost_usd
from schemas import capabilities_for, field_errors, validate_request
from schemas.jobs import JobSpec
from tests.images import image_block, image_bytes
from worker.job.run import JobRun
from worker.job.task import _ready_to_send


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def request(model: str = "claude-haiku-4-5", **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 100, "messages": [user("hi")], **extra}


def errors_of(body: dict[str, Any]) -> list[dict[str, str]]:
    with pytest.raises(ValidationError) as info:
        validate_request(body)
    return field_errors(info.value, body)


def tool_turns(result_content: Any, **tool_use_extra: Any) -> list[dict[str, Any]]:
    tool_use = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}, **tool_use_extra}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": result_content}
    return [user("go"), assistant([tool_use]), user([result])]


def test_tool_result_accepts_search_result_and_tool_reference() -> None:
    """search_result and tool_reference blocks inside a tool_result validate and are kept."""
    search = {
        "type": "search_result",
        "source": "https://example.com/a",
        "title": "A",
        "content": [{"type": "text", "text": "found"}],
        "citations": {"enabled": True},
    }
    reference = {"type": "tool_reference", "tool_name": "lookup"}
    parsed = validate_request(request(messages=tool_turns([search, reference])))
    dumped = parsed.model_dump(mode="json", exclude_none=True)
    assert dumped["messages"][2]["content"][0]["content"] == [search, reference]


def test_unknown_fields_on_known_blocks_pass_through_and_are_named() -> None:
    """SDK 2.x fields (tool_use.caller, toolset_name, image.transformations) are kept, named."""
    image = image_block(image_bytes()) | {"transformations": {"oversized_image": "downsize"}}
    messages = tool_turns("ok", caller={"type": "direct"}, toolset_name="mcp_files")
    messages[0] = user([image])
    parsed = validate_request(request(messages=messages))
    assert parsed.unknown_fields() == {
        "tool_use.caller",
        "tool_use.toolset_name",
        "image.transformations",
    }
    tool_use = parsed.model_dump(mode="json", exclude_none=True)["messages"][1]["content"][0]
    assert tool_use["caller"] == {"type": "direct"} and tool_use["toolset_name"] == "mcp_files"
    assert validate_request(request()).unknown_fields() == set()


async def test_worker_logs_unknown_block_fields_once() -> None:
    """The worker names a job's unknown block fields in one log line before sending."""
    spec = JobSpec(request=request(messages=tool_turns("ok", caller={"type": "direct"})))
    record = new_record("j1", spec, created_at=datetime.now(UTC), default_max_attempts=3)
    settings = SimpleNamespace(max_image_bytes=10**6, anthropic_version="2023-06-01")

    async def no_models() -> dict[str, Any]:
        return {}

    catalog = SimpleNamespace(limits=no_models)  # no copy of the Models API: the table alone
    deps: Any = SimpleNamespace(store=None, settings=settings, catalog=catalog)
    with structlog.testing.capture_logs() as logs:
        assert await _ready_to_send(deps, JobRun(record.id), record, spec) is not None
    named = [e for e in logs if e["event"] == "request.unknown_block_fields"]
    assert [e["names"] for e in named] == [["tool_use.caller"]]


def test_known_block_fields_stay_strictly_typed() -> None:
    """Allowing new fields does not loosen known ones: a wrong type is still a field error."""
    bad = tool_turns("ok")
    bad[1]["content"][0]["input"] = "not an object"
    assert [e["loc"] for e in errors_of(request(messages=bad))] == ["messages.1.content.0.input"]
    image = image_block(image_bytes()) | {"cache_control": {"type": "forever"}}
    locs = {e["loc"] for e in errors_of(request(messages=[user([image])]))}
    assert locs == {"messages.0.content.0.cache_control.type"}


@pytest.mark.parametrize(
    "model",
    [
        "claude-sonnet-4-0",
        "claude-opus-4-0",
        "claude-sonnet-4-20250514",
        "claude-opus-4-1",
        "claude-3-5-haiku-20241022",
        "claude-3-7-sonnet-20250219",
    ],
)
def test_temperature_with_top_p_accepted_on_older_models(model: str) -> None:
    """Claude 4.0/4.1 and 3.x models take temperature and top_p together."""
    validate_request(request(model, temperature=0.5, top_p=0.9))


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-sonnet-4-6"])
def test_temperature_with_top_p_refused_where_the_api_refuses(model: str) -> None:
    """Sonnet 4.5+, Haiku 4.5 answer 400 to both together (reference §8.3)."""
    assert errors_of(request(model, temperature=0.5, top_p=0.9))[0]["loc"] == "temperature"
    validate_request(request(model, temperature=0.5))


@pytest.mark.parametrize(
    ("model", "family_input_price"),
    [
        ("claude-sonnet-4-20250514", 3.0),
        ("claude-opus-4-20250514", 15.0),
        ("claude-3-5-haiku-20241022", 0.8),
        ("claude-opus-4-1-20250805", 15.0),
        ("claude-sonnet-4-5-20250929", 3.0),
        ("claude-sonnet-4@20250514", 3.0),
    ],
)
def test_dated_model_ids_resolve_to_their_family(model: str, family_input_price: float) -> None:
    """A dated snapshot id gets its family's capabilities and a price."""
    caps = capabilities_for(model)
    assert caps.known and caps.model == model
    assert caps.prices is not None and caps.prices.input == family_input_price
    # 100k tokens: below every long-context tier (Sonnet 4.x's premium starts above 200k).
    cost = cost_usd(model, {"input_tokens": 100_000, "output_tokens": 0})
    assert cost == pytest.approx(family_input_price / 10)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", "100"),
        ("max_tokens", True),
        ("max_tokens", 100.0),
        ("temperature", "0.5"),
        ("top_p", "0.9"),
        ("top_k", "5"),
    ],
)
def test_numbers_are_strict(field: str, value: Any) -> None:
    """A number sent as a string (or bool) is a field error, not silently coerced."""
    body = request("claude-sonnet-4-0") | {field: value}
    assert [e["loc"] for e in errors_of(body)] == [field]


def test_strict_numbers_still_take_ints_for_floats() -> None:
    """JSON has one number type: temperature 1 and top_p 0 are floats for the API."""
    parsed = validate_request(request("claude-sonnet-4-0", temperature=1, top_p=0))
    assert parsed.temperature == 1.0
    thinking = {"type": "enabled", "budget_tokens": "2000"}
    body = request("claude-sonnet-4-0", max_tokens=4000, thinking=thinking)
    assert [e["loc"] for e in errors_of(body)] == ["thinking.budget_tokens"]
    bad_flag = tool_turns("ok")
    bad_flag[2]["content"][0]["is_error"] = "yes"
    locs = [e["loc"] for e in errors_of(request(messages=bad_flag))]
    assert locs == ["messages.2.content.0.is_error"]
