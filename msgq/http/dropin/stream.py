"""`POST /v1/messages` with `stream: true`: the API's events, relayed as the worker receives
them, with `ping`s while the job waits.

Which attempt the caller sees: the worker relays every attempt's events (worker/job/relay.py). The
first event of an attempt, `message_start`, is held back until that attempt's first content
event; only then is the caller committed to it. So a retry before any content (an overload
answered with a status, a connection cut right after `message_start`) is invisible: the caller
gets one `message_start`, from the attempt that answered. A failure after content was sent
cannot be undone: the stream ends with the API's `error` event (what the API itself does), while
the job retries in the background and its record ends with the Message, billed once.

Status before content: the HTTP status is chosen when the first bytes go out. Until content or
the first ping (`MSGQ_DROPIN_PING_S` of waiting) nothing is sent, so a job that fails quickly (a
400 from the API, a budget) is answered with the API's status and error body, as a
non-streaming call would be; after a ping, with an `error` event.

A job that ended without a relayed stream (a re-send of an `Idempotency-Key` whose job already
ran, or a relay lost to a Redis blip) is answered from its stored Message, as events.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from contextlib import AsyncExitStack
from typing import Any

import orjson
from starlette.types import Send

from msgq.http.dropin.answer import (
    QUEUED_RECHECK_S,
    DropinCall,
    JobAnswer,
    cancel_unstarted,
    json_answer,
    waiting_for_budget,
)
from msgq.http.dropin.errors import DropinError, budget_wait_error, record_error
from msgq.jobs.endings import Follower
from msgq.keys import RELAY_FAILED, RELAY_REQUEST_ID
from schemas import JobRecord, JobStatus

TICK_S = 0.25  # longest the loop waits for an event before it looks at the job and the caller
MAX_STREAM_S = 24 * 3600.0
PING = b'event: ping\ndata: {"type": "ping"}\n\n'
SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}


def frame(name: str, data: bytes) -> bytes:
    """One SSE event; each line of `data` gets its own `data:` field, as SSE requires."""
    lines = b"".join(b"data: " + line + b"\n" for line in data.split(b"\n"))
    return b"event: " + name.encode() + b"\n" + lines + b"\n"


def error_frame(error: DropinError) -> bytes:
    return frame("error", orjson.dumps(error.body()))


class RelayState:
    """Which attempt the caller follows (see the module docstring), fed one relayed message at
    a time: `feed` returns the frames to send, or the error that ends the stream."""

    def __init__(self) -> None:
        self.committed: int | None = None
        self.candidate: int | None = None
        self.held: bytes | None = None  # the candidate attempt's message_start
        self.finished = False
        self.request_ids: dict[int, str] = {}  # the API's, per attempt, when the worker had it

    @property
    def request_id(self) -> str | None:
        """The API's request ID of the attempt the caller follows."""
        return None if self.committed is None else self.request_ids.get(self.committed)

    def feed(self, message: bytes) -> tuple[list[bytes], DropinError | None]:
        head, name_raw, data = message.split(b"\n", 2)
        attempt, name = int(head), name_raw.decode()
        if name == RELAY_REQUEST_ID:  # before the attempt's events: not one of them
            self.request_ids[attempt] = data.decode(errors="replace")
            return [], None
        if self.committed is None:
            return self._before_content(attempt, name, data), None
        if attempt != self.committed or name in ("message_start", RELAY_FAILED):
            return [], interrupted(name, data)
        self.finished = name == "message_stop"
        return [frame(name, data)], None

    def _before_content(self, attempt: int, name: str, data: bytes) -> list[bytes]:
        if name == "message_start":
            self.candidate, self.held = attempt, frame(name, data)
            return []
        if attempt != self.candidate or self.held is None:
            return []  # an attempt whose start this caller missed: its end is answered instead
        if name == RELAY_FAILED:
            self.candidate = self.held = None  # retried before any content: invisible
            return []
        self.committed, held, self.held = attempt, self.held, None
        self.finished = name == "message_stop"
        return [held, frame(name, data)]


def interrupted(name: str, data: bytes) -> DropinError:
    """The error event for an attempt that failed after the caller saw its content."""
    if name == RELAY_FAILED:
        with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
            error = orjson.loads(data)
            return DropinError(200, str(error["type"]), str(error["message"]))
    message = "the answer was interrupted; msgq retries the job, and its record keeps the Message"
    return DropinError(200, "api_error", message)


def message_events(message: dict[str, Any]) -> list[bytes]:
    """A stored Message as the event sequence whose accumulation is that Message."""
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    out = [frame("message_start", orjson.dumps({"type": "message_start", "message": start}))]
    for index, block in enumerate(message.get("content") or []):
        first, deltas = _split(block)
        out.append(_block_event("content_block_start", index, content_block=first))
        out.extend(_block_event("content_block_delta", index, delta=d) for d in deltas)
        out.append(_block_event("content_block_stop", index))
    delta = {
        "stop_reason": message.get("stop_reason"),
        "stop_sequence": message.get("stop_sequence"),
    }
    end = {"type": "message_delta", "delta": delta, "usage": message.get("usage") or {}}
    out.append(frame("message_delta", orjson.dumps(end)))
    out.append(frame("message_stop", b'{"type": "message_stop"}'))
    return out


def _block_event(name: str, index: int, **fields: Any) -> bytes:
    return frame(name, orjson.dumps({"type": name, "index": index, **fields}))


def _split(block: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A block as its start and its deltas (the form the SDKs accumulate)."""
    kind = block.get("type")
    if kind == "text":
        return {**block, "text": ""}, [{"type": "text_delta", "text": block.get("text", "")}]
    if kind == "thinking":
        deltas = [
            {"type": "thinking_delta", "thinking": block.get("thinking", "")},
            {"type": "signature_delta", "signature": block.get("signature", "")},
        ]
        return {**block, "thinking": "", "signature": ""}, deltas
    if kind in ("tool_use", "server_tool_use"):
        partial = orjson.dumps(block.get("input") or {}).decode()
        return {**block, "input": {}}, [{"type": "input_json_delta", "partial_json": partial}]
    return block, []


class StreamAnswer(JobAnswer):
    """The SSE answer; owns the relay subscription (`stack`) opened before the job was sent."""

    def __init__(
        self, call: DropinCall, stack: AsyncExitStack, follower: Follower, *, ping_s: float
    ) -> None:
        super().__init__(call, stack)
        self.follower = follower
        self.ping_s = ping_s
        self.relay = RelayState()
        self.started = False  # the 200 and its headers have gone out
        self.sent_at = time.monotonic()

    async def produce(self, send: Send) -> None:
        ending = asyncio.create_task(self.call.state.endings.wait(self.call.job_id, MAX_STREAM_S))
        try:
            await self._loop(send, ending)
        finally:
            ending.cancel()
            if self.started:
                with contextlib.suppress(OSError):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _loop(self, send: Send, ending: asyncio.Task[JobRecord | None]) -> None:
        checked = time.monotonic()
        while not self.gone.is_set():
            if self.follower.overflowed:
                await self._fail(send, interrupted("", b""))
                return
            data = await self.follower.get(TICK_S)
            if data is not None:
                frames, error = self.relay.feed(data)
                if error is not None:
                    await self._fail(send, error)
                    return
                await self._write(send, frames)
                if self.relay.finished:
                    return
                continue
            if ending.done():  # the relay before the ending has been read: same connection
                await self._ended(send, ending.result())
                return
            now = time.monotonic()
            if self.relay.committed is None and now - checked >= QUEUED_RECHECK_S:
                checked = now
                if await self._budget_refused(send):
                    return
            if now - self.sent_at >= self.ping_s:
                await self._write(send, [PING])

    async def _budget_refused(self, send: Send) -> bool:
        record = await self.call.state.store.get(self.call.job_id)
        if record is None or not waiting_for_budget(record):
            return False
        if not await cancel_unstarted(self.call):
            return False
        await self._fail(send, budget_wait_error())
        return True

    async def _ended(self, send: Send, record: JobRecord | None) -> None:
        if record is None:
            return
        if record.status is JobStatus.SUCCEEDED and record.result is not None:
            if self.relay.committed is None:
                await self._write(send, message_events(record.result))
            else:  # content relayed, but not its end: the events were lost on the way
                await self._fail(send, interrupted("", b""))
            return
        await self._fail(send, record_error(record))

    async def _write(self, send: Send, frames: list[bytes]) -> None:
        if not frames:
            return
        if not self.started:
            self.started = True
            # The API's request ID when the stream starts with the API's content (the usual case);
            # msgq's own (the middleware's) when a ping had to go out first.
            ours = {**SSE_HEADERS, **self.call.headers(self.relay.request_id)}
            headers = [(k.encode(), v.encode()) for k, v in ours.items()]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"".join(frames), "more_body": True})
        self.sent_at = time.monotonic()

    async def _fail(self, send: Send, error: DropinError) -> None:
        """Before the first bytes: the API's status and body; after: the `error` event."""
        if self.started:
            await self._write(send, [error_frame(error)])
        else:
            await self.send_response(json_answer(self.call, error), send)
