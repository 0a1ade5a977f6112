"""`GET /v1/jobs/{id}/events`: a job as Server-Sent Events, until it ends.

First `status` (the record as it stands, so a late client starts from the present), then
`delta` events with the text while it generates (`{text, offset, attempt, output_tokens}`, from
the job's progress channel) and `status` again at every change of status or attempt; the last
event is the terminal `status`, then the stream closes. Text from before a client connected is
not replayed: the terminal record holds the whole Message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from msgq.http.deps import AppState, State, Tenant, public_record
from msgq.http.job_routes import _internal, _owned
from msgq.http.streams import ClosingStream
from schemas import JobRecord

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
POLL_S = 0.25  # how often the loop looks at the ending between deltas
RECHECK_S = 1.0  # how often the record is re-read for status changes
KEEPALIVE_S = 15.0
MAX_STREAM_S = 3600.0  # a job queued longer than this: the client reconnects (state first)


def sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@router.get(
    "/{job_id}/events",
    summary="Server-Sent Events: the job's state, its text as it streams, and its end",
    response_class=StreamingResponse,
)
async def job_events(job_id: str, tenant: Tenant, state: State) -> StreamingResponse:
    """404 for another tenant's job, 429 when the tenant has MSGQ_MAX_STREAMS_PER_TENANT open
    (in this process); each stream follows the process's one shared subscription."""
    internal = _internal(tenant, job_id)
    _owned(await state.store.get(internal), tenant, job_id)  # 404 before the stream starts
    state.streams.acquire(tenant)
    return ClosingStream(
        _events(state, internal),
        on_close=lambda: state.streams.release(tenant),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


class _Watch:
    """What the client has been told, so only changes are sent."""

    def __init__(self, record: JobRecord) -> None:
        self.seen = (record.status, record.attempts)
        self.checked = time.monotonic()
        self.sent = time.monotonic()

    def changed(self, record: JobRecord) -> bool:
        now = (record.status, record.attempts)
        changed, self.seen = now != self.seen, now
        return changed


async def _events(state: AppState, job_id: str) -> AsyncGenerator[bytes, None]:
    async with state.endings.follow(job_id) as follower:
        record = await state.store.get(job_id)  # after subscribing: no later delta is missed
        if record is None:
            return
        yield sse("status", public_record(record))
        if record.status.terminal:
            return
        watch = _Watch(record)
        ending = asyncio.create_task(state.endings.wait(job_id, MAX_STREAM_S))
        try:
            # A follower that fell too far behind ends here: the client reconnects, state first.
            while not follower.overflowed:
                data = await follower.get(POLL_S)
                if data is None and ending.done():
                    break  # deltas published before the ending have been read
                for chunk in await _step(state, job_id, watch, data):
                    yield chunk
        finally:
            ending.cancel()
        final = ending.result() if ending.done() and not ending.cancelled() else None
        if final is not None:
            yield sse("status", public_record(final))


async def _step(state: AppState, job_id: str, watch: _Watch, data: bytes | None) -> list[bytes]:
    """The events one loop turn sends: a delta, a status change, or a keep-alive comment."""
    out: list[bytes] = []
    now = time.monotonic()
    delta: dict[str, Any] | None = orjson.loads(data) if data is not None else None
    stale = delta is not None and delta.get("attempt") != watch.seen[1]
    if stale or now - watch.checked >= RECHECK_S:
        watch.checked = now
        record = await state.store.get(job_id)
        if record is not None and not record.status.terminal and watch.changed(record):
            out.append(sse("status", public_record(record)))
    if delta is not None:
        out.append(sse("delta", delta))
    if not out and now - watch.sent >= KEEPALIVE_S:
        out.append(b": keep-alive\n\n")
    if out:
        watch.sent = now
    return out
