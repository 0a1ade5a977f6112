"""The simulator plays tool use: with `tools` and `tool_choice` any/tool it calls a tool with an
input that fits the tool's schema, created and streamed, so agent loops run unscripted."""

from __future__ import annotations

from typing import Any

import anthropic
import jsonschema_rs
from anthropic.types import ToolUseBlock

from tests.conftest import Sim
from tests.test_simulator import KEY

WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "minLength": 2},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "when": {"type": "string", "format": "date"},
            "stops": {
                "type": "array",
                "minItems": 2,
                "items": {"$ref": "#/$defs/stop"},
            },
            "note": {"type": ["string", "null"]},
        },
        "required": ["city", "unit", "days", "when", "stops"],
        "$defs": {
            "stop": {
                "type": "object",
                "properties": {"lat": {"type": "number", "exclusiveMinimum": -90}},
                "required": ["lat"],
                "additionalProperties": False,
            }
        },
        "additionalProperties": False,
    },
}
LOOKUP: dict[str, Any] = {
    "name": "lookup",
    "description": "Look a word up.",
    "input_schema": {
        "type": "object",
        "properties": {"word": {"type": "string"}, "exact": {"type": "boolean"}},
        "required": ["word", "exact"],
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def sdk(sim: Sim) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=sim.url, api_key=KEY, max_retries=0)


def fits(tool: dict[str, Any], block: ToolUseBlock) -> None:
    assert block.name == tool["name"] and block.id.startswith("toolu_")
    jsonschema_rs.validate(tool["input_schema"], block.input)


async def test_a_named_tool_is_called_with_an_input_that_fits_its_schema(sim: Sim) -> None:
    """tool_choice {type: tool}: one tool_use block, stop_reason tool_use, its input valid
    against the tool's schema ($ref, enum, bounds, formats, arrays); the same request gets
    the same call."""
    async with sdk(sim) as client:
        first, again = [
            await client.messages.create(
                model="claude-haiku-4-5",
                max_tokens=300,
                messages=ASK,  # type: ignore[arg-type]
                tools=[LOOKUP, WEATHER],  # type: ignore[list-item]
                tool_choice={"type": "tool", "name": "get_weather"},
            )
            for _ in range(2)
        ]
    assert first.stop_reason == "tool_use"
    [block] = first.content
    assert isinstance(block, ToolUseBlock)
    fits(WEATHER, block)
    assert first.usage.output_tokens > 1
    assert again.content == first.content


async def test_any_tool_streams_its_input_as_json_deltas(sim: Sim) -> None:
    """tool_choice {type: any}, streamed: the input arrives as input_json_delta events, and
    the SDK's assembled message equals what create answers for the same request."""
    request: dict[str, Any] = {
        "model": "claude-haiku-4-5",
        "max_tokens": 300,
        "messages": ASK,
        "tools": [WEATHER, LOOKUP],
        "tool_choice": {"type": "any"},
    }
    async with sdk(sim) as client:
        partials: list[str] = []
        async with client.messages.stream(**request) as stream:
            async for event in stream:
                if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                    partials.append(event.delta.partial_json)
            streamed = await stream.get_final_message()
        created = await client.messages.create(**request)
    assert streamed.stop_reason == "tool_use"
    [block] = streamed.content
    assert isinstance(block, ToolUseBlock)
    fits(WEATHER if block.name == "get_weather" else LOOKUP, block)
    assert len(partials) > 1  # in pieces, as the API streams it
    assert streamed.content == created.content


async def test_an_agent_loop_runs_without_scripting(sim: Sim) -> None:
    """Call the tool, send its tool_result back: with tool_choice auto the model answers in
    text and the loop ends; with none given, tools present, text as before."""
    tools: list[Any] = [LOOKUP]
    messages: list[Any] = [{"role": "user", "content": "Define 'queue'."}]
    async with sdk(sim) as client:
        called = await client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=200,
            messages=messages,
            tools=tools,
            tool_choice={"type": "any"},
        )
        [call] = called.content
        assert isinstance(call, ToolUseBlock)
        messages += [
            {"role": "assistant", "content": [call.model_dump()]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "a line"}],
            },
        ]
        answered = await client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=200,
            messages=messages,
            tools=tools,
            tool_choice={"type": "auto"},
        )
    assert answered.stop_reason == "end_turn"
    assert answered.content[0].type == "text"
