"""A Message as the API's stream of events: derived from the very Message a non-streaming call
gets, so assembling the stream gives that Message back.

`message_start` (usage, empty content), per block `content_block_start`, `content_block_delta`*
(text_delta, citations_delta, thinking_delta + signature_delta, input_json_delta) and
`content_block_stop` (blocks of other kinds arrive whole in their start), then `message_delta`
(stop_reason, stop_sequence, cumulative usage) and `message_stop`; a `ping` after the start.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

DELTA_CHARS = 20  # about 5 tokens a delta: the API's deltas are a few tokens each
TOOL_INPUT_BLOCKS = frozenset({"tool_use", "server_tool_use"})
MESSAGE_FIELDS = frozenset(
    {"id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"}
)
DELTA_FIELDS = frozenset({"stop_details", "container"})  # the API sends these in message_delta

Event = tuple[str, dict[str, Any], int]  # (event name, data, output tokens it carries)


def is_message(body: Any) -> bool:
    return (
        isinstance(body, dict)
        and body.get("type") == "message"
        and isinstance(body.get("content"), list)
        and isinstance(body.get("usage"), dict)
    )


def _tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def _chunks(text: str) -> list[str]:
    return [text[i : i + DELTA_CHARS] for i in range(0, len(text), DELTA_CHARS)]


def _delta(index: int, delta: dict[str, Any], tokens: int = 0) -> Event:
    return (
        "content_block_delta",
        {"type": "content_block_delta", "index": index, "delta": delta},
        tokens,
    )


def block_events(index: int, block: dict[str, Any]) -> list[Event]:
    """One content block as start, deltas and stop; unknown kinds arrive whole in the start."""
    kind = block.get("type")
    deltas: list[Event] = []
    start = dict(block)
    if kind == "text":
        start["text"] = ""
        start.pop("citations", None)
        for citation in block.get("citations") or []:
            deltas.append(_delta(index, {"type": "citations_delta", "citation": citation}))
        for piece in _chunks(str(block.get("text", ""))):
            deltas.append(_delta(index, {"type": "text_delta", "text": piece}, _tokens(piece)))
    elif kind == "thinking":
        start.update(thinking="", signature="")
        for piece in _chunks(str(block.get("thinking", ""))):
            deltas.append(
                _delta(index, {"type": "thinking_delta", "thinking": piece}, _tokens(piece))
            )
        deltas.append(
            _delta(index, {"type": "signature_delta", "signature": block.get("signature", "")})
        )
    elif kind in TOOL_INPUT_BLOCKS:
        start["input"] = {}
        raw = orjson.dumps(block.get("input") or {}).decode() if block.get("input") else ""
        for piece in _chunks(raw) or [""]:
            delta = {"type": "input_json_delta", "partial_json": piece}
            deltas.append(_delta(index, delta, _tokens(piece)))
    begin = {"type": "content_block_start", "index": index, "content_block": start}
    stop = {"type": "content_block_stop", "index": index}
    return [("content_block_start", begin, 0), *deltas, ("content_block_stop", stop, 0)]


def message_events(message: dict[str, Any]) -> list[Event]:
    """The whole stream for one Message, in the API's order."""
    usage = dict(message["usage"])
    output_tokens = int(usage.get("output_tokens") or 0)
    extra = {k: v for k, v in message.items() if k not in MESSAGE_FIELDS | DELTA_FIELDS}
    start: dict[str, Any] = {
        **{k: message[k] for k in ("id", "type", "role", "model") if k in message},
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        **extra,
        "usage": {**usage, "output_tokens": min(1, output_tokens)},
    }
    events: list[Event] = [
        ("message_start", {"type": "message_start", "message": start}, 0),
        ("ping", {"type": "ping"}, 0),
    ]
    for index, block in enumerate(message["content"]):
        events += block_events(index, block)
    delta = {
        "stop_reason": message.get("stop_reason"),
        "stop_sequence": message.get("stop_sequence"),
        **{k: message[k] for k in DELTA_FIELDS if k in message},
    }
    # Cumulative, as the API sends them now: the final counts override message_start's.
    final_usage = {
        k: usage[k]
        for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        if k in usage
    }
    final_usage["output_tokens"] = output_tokens
    events.append(
        ("message_delta", {"type": "message_delta", "delta": delta, "usage": final_usage}, 0)
    )
    events.append(("message_stop", {"type": "message_stop"}, 0))
    return events
