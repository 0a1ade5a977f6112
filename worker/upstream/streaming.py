"""Assembling a streamed answer into the Message a non-streaming call would have returned.

Pure: events in, a Message dict out (no I/O). Text, thinking with its signature, redacted
thinking, tool_use and server_tool_use with input from `input_json_delta`, citations from
`citations_delta`, server tool results (which arrive whole), `stop_reason`, `stop_sequence`, and
usage from `message_start` overridden field by field by `message_delta` (its counts are
cumulative). Unknown blocks are kept as they start; unknown deltas are merged into their block
(strings appended, lists extended, anything else set), never dropped.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

TEXT_FIELDS = {"text_delta": "text", "thinking_delta": "thinking"}


class StreamError(Exception):
    """The event stream broke the protocol (out of order, not JSON, no message_start)."""


class MidStreamError(Exception):
    """An `error` event: `.error` is its `{"type", "message", ...}`."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(str(error.get("message") or error.get("type") or "error event"))
        self.error = error


class MessageAssembler:
    """Feed each event (`feed(name, data)`); `message()` once `done` is True."""

    def __init__(self) -> None:
        self._message: dict[str, Any] | None = None
        self._blocks: dict[int, dict[str, Any]] = {}
        self._json: dict[int, list[str]] = {}
        self._chars = 0  # of generated text, thinking and tool input so far
        self.done = False

    @property
    def output_tokens(self) -> int:
        """Output tokens so far: the API reports them only at the start and the end, so between
        the two this counts about 4 characters a token, as the API's docs do."""
        reported = 0
        if self._message is not None:
            reported = int(self._message["usage"].get("output_tokens") or 0)
        return max(reported, math.ceil(self._chars / 4))

    def feed(self, name: str, data: dict[str, Any]) -> str:
        """Apply one event. Returns the text it added (for live watchers), else ""."""
        kind = data.get("type", name)
        if kind == "error":
            error = data.get("error")
            raise MidStreamError(error if isinstance(error, dict) else {"type": "api_error"})
        if kind == "message_start":
            self._start(data)
            return ""
        if kind == "ping" or kind not in HANDLERS:
            return ""  # unknown event types are skipped, as the SDK does
        if self._message is None:
            msg = f"{kind} before message_start"
            raise StreamError(msg)
        return HANDLERS[kind](self, data)

    def _start(self, data: dict[str, Any]) -> None:
        message = data.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("usage"), dict):
            msg = "message_start without a message"
            raise StreamError(msg)
        self._message = {**message, "content": [], "usage": dict(message["usage"])}

    def _block_start(self, data: dict[str, Any]) -> str:
        block = data.get("content_block")
        if not isinstance(block, dict):
            msg = "content_block_start without a block"
            raise StreamError(msg)
        self._blocks[_index(data)] = dict(block)
        return ""

    def _block_delta(self, data: dict[str, Any]) -> str:
        index, delta = _index(data), data.get("delta")
        block = self._blocks.get(index)
        if block is None or not isinstance(delta, dict):
            msg = f"content_block_delta for unknown block {index}"
            raise StreamError(msg)
        kind = delta.get("type")
        if kind in TEXT_FIELDS:
            piece = str(delta.get(TEXT_FIELDS[kind], ""))
            field = TEXT_FIELDS[kind]
            block[field] = str(block.get(field) or "") + piece
            self._chars += len(piece)
            return piece if kind == "text_delta" else ""
        if kind == "input_json_delta":
            piece = str(delta.get("partial_json", ""))
            self._json.setdefault(index, []).append(piece)
            self._chars += len(piece)
        elif kind == "signature_delta":
            block["signature"] = delta.get("signature", "")
        elif kind == "citations_delta":
            block["citations"] = [*(block.get("citations") or []), delta.get("citation")]
        else:
            _merge(block, delta)
        return ""

    def _block_stop(self, data: dict[str, Any]) -> str:
        index = _index(data)
        pieces = self._json.pop(index, None)
        if pieces and "".join(pieces) and index in self._blocks:
            try:
                self._blocks[index]["input"] = orjson.loads("".join(pieces))
            except orjson.JSONDecodeError:
                msg = f"tool input of block {index} is not JSON"
                raise StreamError(msg) from None
        return ""

    def _message_delta(self, data: dict[str, Any]) -> str:
        assert self._message is not None  # feed() checked
        delta = data.get("delta")
        if isinstance(delta, dict):
            self._message.update(delta)
        usage = data.get("usage")
        if isinstance(usage, dict):
            self._message["usage"].update({k: v for k, v in usage.items() if v is not None})
        return ""

    def _message_stop(self, data: dict[str, Any]) -> str:
        self.done = True
        return ""

    def message(self) -> dict[str, Any]:
        """The assembled Message, content in index order."""
        if self._message is None:
            msg = "the stream carried no message_start"
            raise StreamError(msg)
        content = [self._blocks[i] for i in sorted(self._blocks)]
        return {**self._message, "content": content}


def _index(data: dict[str, Any]) -> int:
    index = data.get("index")
    if not isinstance(index, int):
        msg = f"{data.get('type')} without an index"
        raise StreamError(msg)
    return index


def _merge(block: dict[str, Any], delta: dict[str, Any]) -> None:
    """An unknown delta kind: keep what it carries rather than drop it."""
    for key, value in delta.items():
        if key == "type":
            continue
        current = block.get(key)
        if isinstance(current, str) and isinstance(value, str):
            block[key] = current + value
        elif isinstance(current, list) and isinstance(value, list):
            block[key] = [*current, *value]
        else:
            block[key] = value


HANDLERS = {
    "content_block_start": MessageAssembler._block_start,
    "content_block_delta": MessageAssembler._block_delta,
    "content_block_stop": MessageAssembler._block_stop,
    "message_delta": MessageAssembler._message_delta,
    "message_stop": MessageAssembler._message_stop,
}
