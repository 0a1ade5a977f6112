"""A drop-in call's answer while its job runs: the HTTP connection is the caller's patience.

`JobAnswer` is an ASGI response that listens for the caller hanging up while it waits. A job
that has not started when that happens (queued, no attempt made) is canceled and never sent; one
that has started runs to its end and keeps its record, so its cost is counted once and an
`Idempotency-Key` re-send gets the answer. `WaitAnswer` is the non-streaming answer: the stored
Message with 200, or the error (see `errors`) once the job ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from msgq.http.deps import AppState
from msgq.http.dropin.errors import DropinError, budget_wait_error, record_error
from msgq.jobs import records
from schemas import JobRecord, JobStatus

log = structlog.get_logger("msgq.dropin")
QUEUED_RECHECK_S = 0.25  # a queued job's record is re-read this often (budget waits show there)
RUNNING_RECHECK_S = 5.0  # a started one's end arrives by notification; this is the fallback


@dataclass(frozen=True)
class DropinCall:
    """One drop-in call: the tenant's job and where it stands when submitted."""

    state: AppState
    job_id: str  # internal (`tenant:id`)
    public_id: str  # what the caller sees in `msgq-job-id`
    record: JobRecord

    def headers(self, request_id: str | None = None) -> dict[str, str]:
        headers = {"msgq-job-id": self.public_id}
        if request_id:
            headers["request-id"] = request_id
        return headers


def unstarted(record: JobRecord) -> bool:
    """Nothing sent yet: canceling it costs the caller nothing and the API never sees it."""
    return record.status is JobStatus.QUEUED and record.attempts == 0


async def cancel_unstarted(call: DropinCall) -> bool:
    """Cancel the job if it has not started (atomically: a worker taking it first wins)."""

    def change(record: JobRecord) -> JobRecord | None:
        return records.ended(record, JobStatus.CANCELED) if unstarted(record) else None

    record = await call.state.store.update(call.job_id, change)
    if record is None or record.status is not JobStatus.CANCELED or record.attempts:
        return False
    await call.state.store.unqueue(call.job_id)
    return True


def waiting_for_budget(record: JobRecord) -> bool:
    return unstarted(record) and record.waiting_reason == "budget"


def json_answer(call: DropinCall, error: DropinError) -> Response:
    return Response(
        orjson.dumps(error.body()),
        status_code=error.status,
        media_type="application/json",
        headers={**call.headers(), **error.answer_headers()},
    )


class JobAnswer(Response):
    """Runs `produce(send)` while listening for a disconnect; cleans up after either. `stack`
    holds what the call owns until it ends (its slot in the tenant's cap; a stream's relay
    subscription): closed once the answer is done."""

    def __init__(self, call: DropinCall, stack: contextlib.AsyncExitStack) -> None:
        super().__init__(status_code=200)
        self.call = call
        self.stack = stack
        self.gone = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        listener = asyncio.create_task(self._listen(receive))
        try:
            await self.produce(send)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            await self.finish()

    async def _listen(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone.set()

    async def produce(self, send: Send) -> None:
        raise NotImplementedError

    async def send_response(self, response: Response, send: Send) -> None:
        await response(self.scope, _nothing, send)

    async def finish(self) -> None:
        """Give back what the call held; the caller hung up before the end: cancel the job
        unless it has started."""
        await self.stack.aclose()  # a stream's relay: the worker's next publish turns it off
        if self.gone.is_set():
            canceled = await cancel_unstarted(self.call)
            log.info("dropin.caller_gone", job_id=self.call.job_id, canceled=canceled)

    async def until(self, awaitable: Any) -> Any:
        """`awaitable`'s result, or None when the caller hangs up first."""
        task = asyncio.ensure_future(awaitable)
        gone = asyncio.ensure_future(self.gone.wait())
        try:
            await asyncio.wait({task, gone}, return_when="FIRST_COMPLETED")
        finally:
            gone.cancel()
            if not task.done():
                task.cancel()
        return task.result() if task.done() and not task.cancelled() else None


class WaitAnswer(JobAnswer):
    """`stream` false or absent: wait for the end, then answer as the API would have."""

    async def produce(self, send: Send) -> None:
        record = self.call.record
        while not record.status.terminal and not self.gone.is_set():
            if waiting_for_budget(record) and await cancel_unstarted(self.call):
                await self.send_response(json_answer(self.call, budget_wait_error()), send)
                return
            wait_s = QUEUED_RECHECK_S if unstarted(record) else RUNNING_RECHECK_S
            # endings.wait bounds itself: it answers the record as it stands after wait_s.
            found = await self.until(self.call.state.endings.wait(self.call.job_id, wait_s))
            record = found or record
        if self.gone.is_set():
            return
        await self.send_response(self.answer(record), send)

    def answer(self, record: JobRecord) -> Response:
        if record.status is JobStatus.SUCCEEDED and record.result is not None:
            return Response(
                orjson.dumps(record.result),
                media_type="application/json",
                headers=self.call.headers(record.upstream_request_id),
            )
        return json_answer(self.call, record_error(record))


async def _nothing() -> dict[str, Any]:
    return {"type": "http.disconnect"}
