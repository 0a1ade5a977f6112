"""The one HTTP call to `POST /v1/messages`, streamed; `classify` says what its failures mean."""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from httpx_sse import EventSource, ServerSentEvent, SSEError, aconnect_sse
from pydantic import ValidationError

from msgq.errors import UnavailableError
from msgq.settings import Settings
from schemas import Message
from worker.classify import (
    classify,
    classify_error_event,
    invalid_response,
    parse_message,
    parse_retry_after,
)
from worker.streaming import MessageAssembler, MidStreamError, StreamError

__all__ = [
    "UpstreamClients",
    "UpstreamReply",
    "build_client",
    "call_headers",
    "classify",
    "classify_error_event",
    "parse_message",
    "parse_retry_after",
    "send_message",
]

OnProgress = Callable[[int, str], Awaitable[None]]
OnEvent = Callable[[str, str], Awaitable[None]]  # (event name, its raw data), as received


@dataclass(frozen=True)
class UpstreamReply:
    """A successful call: the Message exactly as sent, plus what the headers told us."""

    message: dict[str, Any]
    request_id: str | None
    headers: dict[str, str]
    latency_ms: float


def build_client(
    settings: Settings, *, verify: ssl.SSLContext | bool = True, keepalive: int = 100
) -> httpx.AsyncClient:
    """A pooled client for the API, created at start-up and closed at shutdown.

    Betas are not among its defaults: each call sends its job's (`call_headers`), and a job
    that names none must not be sent a fleet default it cannot remove.
    """
    headers = {"anthropic-version": settings.anthropic_version, "content-type": "application/json"}
    if settings.anthropic_api_key is not None:
        headers["x-api-key"] = settings.anthropic_api_key.get_secret_value()
    return httpx.AsyncClient(
        base_url=settings.anthropic_base_url,
        headers=headers,
        timeout=httpx.Timeout(settings.request_timeout_s, connect=settings.connect_timeout_s),
        limits=httpx.Limits(
            max_connections=settings.max_jobs * 2, max_keepalive_connections=keepalive
        ),
        verify=verify,
    )


def fleet_betas(settings: Settings) -> list[str]:
    """MSGQ_ANTHROPIC_BETA as a list: the betas of jobs that name none."""
    return [name.strip() for name in (settings.anthropic_beta or "").split(",") if name.strip()]


def call_headers(
    settings: Settings,
    *,
    anthropic_version: str | None,
    betas: list[str] | None,
    workspace_id: str | None = None,
) -> dict[str, str]:
    """The headers one call sends for a job: its version and betas, else the fleet's."""
    headers = {"anthropic-version": anthropic_version or settings.anthropic_version}
    names = betas if betas is not None else fleet_betas(settings)
    if names:
        headers["anthropic-beta"] = ",".join(names)
    if workspace_id:
        headers["anthropic-workspace-id"] = workspace_id
    return headers


class UpstreamClients:
    """The worker's API clients: several httpx clients with small pools, handed out in turn.

    Why not one: httpcore's pool walks all of its connections and waiting requests on every
    request and every release (encode/httpcore#1035), so its cost per call grows with the calls
    in flight. On this machine one client at 16 concurrent calls ran 615 calls/s at 1.6 ms of
    CPU each; the same 16 calls over eight clients ran 1,568/s at 0.64 ms. Calls are spread as
    they start (round robin, not by load), so each client carries about `CALLS_PER_CLIENT` of
    the worker's calls; each may still open up to `max_jobs * 2` connections, so a skewed spread
    waits for nothing. They share one TLS context.
    """

    CALLS_PER_CLIENT = 2

    def __init__(self, settings: Settings) -> None:
        count = max(1, -(-settings.max_jobs // self.CALLS_PER_CLIENT))
        tls = httpx.create_ssl_context()
        keepalive = max(4, 100 // count)
        self.clients = [
            build_client(settings, verify=tls, keepalive=keepalive) for _ in range(count)
        ]
        self._turn = itertools.cycle(self.clients)

    def pick(self) -> httpx.AsyncClient:
        """The next client in turn: calls spread evenly, so each pool stays small."""
        return next(self._turn)

    async def aclose(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self.clients), return_exceptions=True)


async def send_message(
    client: httpx.AsyncClient,
    body: dict[str, Any],
    *,
    stream: bool = True,
    idle_timeout_s: float = 60.0,
    on_progress: OnProgress | None = None,
    headers: dict[str, str] | None = None,
    on_event: OnEvent | None = None,
) -> UpstreamReply:
    """Call the API once. Raises an UpstreamError subclass for every failure.

    It streams (`stream: true`) and assembles the Message a non-streaming call would return.
    Why always: one code path for short and long jobs; a job runs as long as events keep
    coming (an idle timeout between events, `idle_timeout_s`, replaces a total read timeout
    that a long generation could never beat); progress can be watched; and the API (like its
    SDK) wants streaming for any call that may run past 10 minutes. Until the answer starts,
    the client's read timeout (`request_timeout_s`) applies. `on_progress(output_tokens, text)`
    is awaited after each content delta. `stream=False` is the plain call, kept for comparison.
    `headers`: the job's own (`call_headers`), over the client's defaults. `on_event(name,
    data)` is awaited with each event before it is applied (the drop-in relay).
    """
    started = time.perf_counter()
    try:
        if not stream:
            whole = {k: v for k, v in body.items() if k != "stream"}
            response = await client.post(
                "/v1/messages", content=orjson.dumps(whole), headers=headers
            )
        else:
            return await _stream(
                client, body, started, idle_timeout_s, (on_progress, on_event), headers
            )
    except httpx.TimeoutException as exc:
        msg = f"request timed out ({type(exc).__name__})"
        raise UnavailableError(msg, error_type="timeout") from None
    except httpx.TransportError as exc:
        msg = f"connection failed ({type(exc).__name__})"
        raise UnavailableError(msg, error_type="connection_error") from None
    if response.status_code != 200:
        raise classify(response)
    return _reply(parse_message(response), response, started)


def _reply(message: dict[str, Any], response: httpx.Response, started: float) -> UpstreamReply:
    return UpstreamReply(
        message=message,
        request_id=response.headers.get("request-id"),
        headers=dict(response.headers),
        latency_ms=(time.perf_counter() - started) * 1000,
    )


async def _stream(
    client: httpx.AsyncClient,
    body: dict[str, Any],
    started: float,
    idle_timeout_s: float,
    hooks: tuple[OnProgress | None, OnEvent | None],
    headers: dict[str, str] | None = None,
) -> UpstreamReply:
    # httpx's own read timeout is off: asyncio bounds the wait for the answer to start, then
    # each gap between events (a trickle of bytes that never completes an event is idle too).
    timeout = httpx.Timeout(None, connect=client.timeout.connect, pool=client.timeout.pool)
    streaming = False
    assembler = MessageAssembler()
    try:
        async with (
            asyncio.timeout(client.timeout.read) as timer,
            aconnect_sse(
                client,
                "POST",
                "/v1/messages",
                content=orjson.dumps({**body, "stream": True}),
                timeout=timeout,
                headers=headers,
            ) as source,
        ):
            response = source.response
            if response.status_code != 200:
                await response.aread()
                raise classify(response)
            streaming = True
            await _consume(source, assembler, timer, idle_timeout_s, hooks)
    except TimeoutError:
        if not assembler.done:  # done: the server held the connection open after message_stop
            msg = (
                f"no event for {idle_timeout_s:g} s mid-stream (idle timeout)"
                if streaming
                else "request timed out (no answer within request_timeout_s)"
            )
            raise UnavailableError(msg, error_type="timeout") from None
    except SSEError:  # before TransportError, which it subclasses
        raise invalid_response(response, "not an event stream") from None
    except httpx.TransportError as exc:
        if not streaming:
            raise
        msg = f"connection lost mid-stream ({type(exc).__name__})"
        raise UnavailableError(msg, error_type="connection_error") from None
    if not assembler.done:
        msg = "the stream ended before message_stop"
        raise UnavailableError(msg, error_type="connection_error")
    message = assembler.message()
    try:
        Message.model_validate(message)
    except ValidationError:
        raise invalid_response(response, "not a Message") from None
    return _reply(message, response, started)


async def _consume(
    source: EventSource,
    assembler: MessageAssembler,
    timer: asyncio.Timeout,
    idle_timeout_s: float,
    hooks: tuple[OnProgress | None, OnEvent | None],
) -> None:
    """Read events until message_stop, each within `idle_timeout_s` of the one before, then
    the end of the body (briefly), so that the connection goes back to the pool."""
    on_progress, on_event = hooks
    loop = asyncio.get_running_loop()
    # Moving the timer costs more than parsing an event: move it at most every `step`, which
    # keeps the idle timeout exact to within `step` (a tenth of it, at most a second).
    step = min(1.0, idle_timeout_s / 10)
    moved = loop.time()
    timer.reschedule(moved + idle_timeout_s)
    async for event in source.aiter_sse():
        if assembler.done:
            continue
        if (now := loop.time()) - moved >= step:
            moved = now
            timer.reschedule(now + idle_timeout_s)
        if on_event is not None:
            await on_event(event.event, event.data)
        text = _feed(assembler, event, source.response)
        if on_progress is not None and event.event == "content_block_delta":
            await on_progress(assembler.output_tokens, text)
        if assembler.done:
            timer.reschedule(loop.time() + step)


def _feed(assembler: MessageAssembler, event: ServerSentEvent, response: httpx.Response) -> str:
    """One event into the assembler; protocol breaks are final, `error` events classified."""
    try:
        return assembler.feed(event.event, orjson.loads(event.data) if event.data else {})
    except orjson.JSONDecodeError:
        raise invalid_response(response, "an event that is not JSON") from None
    except StreamError as exc:
        raise invalid_response(response, f"a broken event stream ({exc})") from None
    except MidStreamError as exc:
        raise classify_error_event(response, exc.error) from None
