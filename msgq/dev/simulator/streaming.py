"""`stream: true`: a Message sent as server-sent events (see `events`), paced by the latency
model, with `ping`s through long quiet spells and faults halfway through the content."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from msgq.dev.simulator.events import is_message, message_events
from msgq.dev.simulator.latency import Timing
from msgq.dev.simulator.state import Scripted, SimState

PING_S = 5.0  # a ping after this long without an event, as the API keeps a stream alive
FLUSH_BYTES = 16 * 1024


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
    timing: Timing,
) -> web.StreamResponse:
    """The answer to a `stream: true` request that passed every check, paced by `timing`."""
    headers = {"request-id": request_id, **state.limits.headers(), **scripted.headers}
    if not is_message(body):  # a scripted non-Message goes out as JSON: the client must cope
        return web.Response(
            status=200, body=orjson.dumps(body), content_type="application/json", headers=headers
        )
    return await stream_reply(
        request,
        body,
        headers=headers,
        latency_ms=timing.ttft_ms,
        ms_per_token=timing.ms_per_token,
        fault=fault_of(scripted, state),
    )
