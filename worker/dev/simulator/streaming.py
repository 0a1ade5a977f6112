"""`stream: true`: a Message sent as the API's server-sent events, paced, with mid-stream faults.

The events are derived from the very Message a non-streaming call gets, so assembling the stream
gives that Message back: `message_start` (usage, empty content), per block `content_block_start`,
`content_block_delta`* (text_delta, citations_delta, thinking_delta + signature_delta,
input_json_delta) and `content_block_stop`, then `message_delta` (stop_reason, stop_sequence,
usage) and `message_stop`, with `ping`s after the start and through long quiet spells.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from worker.dev.simulator.state import Scripted, SimState

PING_S = 5.0  # a ping after this long without an event, as the API keeps a stream alive
DELTA_CHARS = 20  # about 5 tokens a delta: the API's deltas are a few tokens each
FLUSH_BYTES = 16 * 1024
TOOL_INPUT_BLOCKS = frozenset({"tool_use", "server_tool_use"})
MESSAGE_FIELDS = frozenset(
    {"id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"}
)
DELTA_FIELDS = frozenset({"stop_details", "container"})  # the API sends these in message_delta

Event = tuple[str, dict[str, Any], int]  # (event name, data, output tokens it carries)


@dataclass(frozen=True)
class StreamFault:
    """What goes wrong halfway through the content: an `error` event, a cut, a stall, garbage."""

    kind: str  # error | cut | stall | malformed
    error_type: str = "overloaded_error"
    stall_s: float = 3600.0


def fault_of(scripted: Scripted, state: SimState) -> StreamFault | None:
    """The scripted answer's stream fault, else one rolled at the configured rates."""
    if scripted.stream_error:
        return StreamFault("error", error_type=scripted.stream_error)
    if scripted.stream_cut or scripted.drop_mid_body:
        return StreamFault("cut")
    if scripted.stream_stall_s:
        return StreamFault("stall", stall_s=scripted.stream_stall_s)
    if scripted.malformed:
        return StreamFault("malformed")
    kind = state.roll_stream_fault()
    return StreamFault(kind) if kind else None


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


def encode(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class Paced:
    """Writes events at the latency model's pace, coalescing those due at the same moment."""

    def __init__(self, request: web.Request, response: web.StreamResponse, ms_per_token: float):
        self.request = request
        self.response = response
        self.ms_per_token = ms_per_token
        self.buffer = bytearray()
        self.tokens = 0
        self.started = time.monotonic()
        self.last_sent = self.started

    async def send(self, name: str, data: dict[str, Any], tokens: int = 0) -> None:
        self.tokens += tokens
        due = self.started + self.tokens * self.ms_per_token / 1000
        if due - time.monotonic() > 0.001:
            await self.flush()
            await self.wait(due - time.monotonic(), pings=True)
        self.buffer += encode(name, data)
        if len(self.buffer) >= FLUSH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        if self.buffer:
            await self.response.write(bytes(self.buffer))
            self.buffer.clear()
            self.last_sent = time.monotonic()

    async def wait(self, seconds: float, *, pings: bool) -> None:
        """Sleep; with `pings`, keep the stream alive. Stops early once the client has gone."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            transport = self.request.transport
            if transport is None or transport.is_closing():
                return
            if pings and time.monotonic() - self.last_sent >= PING_S:
                self.buffer += encode("ping", {"type": "ping"})
                await self.flush()
            await asyncio.sleep(min(left, 0.25, PING_S))

    def restart_clock(self) -> None:
        """Generation starts now (after the time to first token)."""
        self.started, self.tokens = time.monotonic(), 0


async def stream_reply(
    request: web.Request,
    message: dict[str, Any],
    *,
    headers: dict[str, str],
    latency_ms: float,
    ms_per_token: float,
    fault: StreamFault | None,
) -> web.StreamResponse:
    """Send `message` as an event stream; `fault` strikes halfway through its content deltas."""
    response = web.StreamResponse(
        status=200,
        headers={**headers, "content-type": "text/event-stream", "cache-control": "no-cache"},
    )
    await response.prepare(request)
    events = message_events(message)
    paced = Paced(request, response, ms_per_token)
    deltas = [i for i, (name, _, _) in enumerate(events) if name == "content_block_delta"]
    strike_at = deltas[len(deltas) // 2] if deltas else 2
    for position, (name, data, tokens) in enumerate(events):
        if position == 2:  # after message_start and ping: the time to first token
            await paced.flush()
            await paced.wait(latency_ms / 1000, pings=True)
            paced.restart_clock()
        if fault is not None and position == strike_at and await _strike(paced, fault):
            return response
        await paced.send(name, data, tokens)
    await paced.flush()
    await response.write_eof()
    return response


async def _strike(paced: Paced, fault: StreamFault) -> bool:
    """Apply the fault; True when the stream ends here."""
    await paced.flush()
    if fault.kind == "stall":
        await paced.wait(fault.stall_s, pings=False)  # silence: not even a ping
        paced.restart_clock()
        return False
    if fault.kind == "error":
        error = {"type": fault.error_type, "message": f"simulated {fault.error_type} mid-stream"}
        await paced.response.write(encode("error", {"type": "error", "error": error}))
    elif fault.kind == "malformed":
        await paced.response.write(b'event: content_block_delta\ndata: {"type": "content_blo\n\n')
    else:
        if paced.request.transport is not None:
            paced.request.transport.close()
        msg = "simulator cut the stream on purpose"
        raise ConnectionResetError(msg)
    await paced.response.write_eof()
    return True


async def stream_answer(
    request: web.Request,
    state: SimState,
    scripted: Scripted,
    body: Any,
    request_id: str,
) -> web.StreamResponse:
    """The answer to a `stream: true` request that passed every check."""
    headers = {"request-id": request_id, **state.limits.headers(), **scripted.headers}
    if not is_message(body):  # a scripted non-Message goes out as JSON: the client must cope
        return web.Response(
            status=200, body=orjson.dumps(body), content_type="application/json", headers=headers
        )
    return await stream_reply(
        request,
        body,
        headers=headers,
        latency_ms=state.config.latency_ms,
        ms_per_token=state.ms_per_token(scripted),
        fault=fault_of(scripted, state),
    )
