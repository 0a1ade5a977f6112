"""The one HTTP call to `POST /v1/messages`, streamed; `classify` says what its failures mean.

The Messages calls share one aiohttp session per worker process (`Upstream`): the worker is
CPU-bound and the transport was most of its CPU (BENCHMARKS.md, "Upstream transport", measures
it against httpx). The occasional Batches and Models API calls keep a plain httpx client
(`build_client`, `Services.http`). An answer reaches `worker.upstream.classify` as plain values
(status, lower-cased headers, body). Error messages name exception types only: an exception's
text can carry URLs or headers.
"""

from __future__ import annotations

import asyncio
import io
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import orjson
from aiohttp.helpers import get_env_proxy_for_url
from pydantic import ValidationError
from yarl import URL

from msgq.errors import UnavailableError
from msgq.settings import Settings
from schemas import Message
from worker.upstream.classify import (
    classify,
    classify_error_event,
    header_dict,
    invalid_response,
    parse_message,
)
from worker.upstream.sse import ServerSentEvent, SSEDecoder
from worker.upstream.streaming import MessageAssembler, MidStreamError, StreamError

OnProgress = Callable[[int, str], Awaitable[None]]
OnEvent = Callable[[str, str], Awaitable[None]]  # (event name, its raw data), as received
OnOpen = Callable[[str | None], Awaitable[None]]  # the answer's `request-id`, once it started
Hooks = tuple[OnProgress | None, OnEvent | None, OnOpen | None]
LARGE_BODY_BYTES = 1024 * 1024  # aiohttp warns about raw bytes bodies above this
# What fails a call before or during its answer. TimeoutError (aiohttp's connect and read
# timeouts subclass it) is caught before these, as it is an OSError too.
CONNECTION_ERRORS = (aiohttp.ClientError, OSError)
# What httpx-sse's aconnect_sse sent with every streamed call, over the job's own headers.
STREAM_HEADERS = {"Accept": "text/event-stream", "Cache-Control": "no-store"}


@dataclass(frozen=True)
class UpstreamReply:
    """A successful call: the Message exactly as sent, plus what the headers told us."""

    message: dict[str, Any]
    request_id: str | None
    headers: dict[str, str]
    latency_ms: float


def default_headers(settings: Settings) -> dict[str, str]:
    """Every call's headers, under the job's own (`call_headers`). Betas are not among them: a
    job that names none must not be sent a fleet default it cannot remove."""
    headers = {"anthropic-version": settings.anthropic_version, "content-type": "application/json"}
    if settings.anthropic_api_key is not None:
        headers["x-api-key"] = settings.anthropic_api_key.get_secret_value()
    return headers


def build_client(
    settings: Settings, *, verify: ssl.SSLContext | bool = True, keepalive: int = 100
) -> httpx.AsyncClient:
    """A pooled httpx client for the occasional call (Batches and Models APIs), created at
    start-up and closed at shutdown."""
    return httpx.AsyncClient(
        base_url=settings.anthropic_base_url,
        headers=default_headers(settings),
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
    api_headers: dict[str, str] | None = None,
) -> dict[str, str]:
    """The headers one call sends for a job: its version and betas, else the fleet's, and the
    other `anthropic-*` headers its producer sent."""
    headers = dict(api_headers or {})
    headers["anthropic-version"] = anthropic_version or settings.anthropic_version
    names = betas if betas is not None else fleet_betas(settings)
    if names:
        headers["anthropic-beta"] = ",".join(names)
    if workspace_id:
        headers["anthropic-workspace-id"] = workspace_id
    return headers


class Upstream:
    """The worker's Messages calls: one aiohttp session, made inside the running loop at
    start-up (`worker.job.task.startup`) and closed at shutdown.

    Its pool may open `max_jobs * 2` connections, as the httpx clients could, so a call never
    waits for one. `verify` as httpx's: True verifies against the same trust roots as the httpx
    clients (`httpx.create_ssl_context()`: certifi, or SSL_CERT_FILE/SSL_CERT_DIR), False does
    not verify, or a context of your own. HTTPS_PROXY (HTTP_PROXY for an http:// base URL) and
    NO_PROXY apply, as they do to httpx, read once here (`env_proxy`). Timeouts:
    `connect_timeout_s` to connect (TLS included); a plain call's answer within
    `request_timeout_s` of each read (httpx's read timeout); a streamed call's bounded by
    `send_message` itself.
    """

    def __init__(self, settings: Settings, *, verify: ssl.SSLContext | bool = True) -> None:
        self.url = settings.anthropic_base_url.rstrip("/") + "/v1/messages"
        self.request_timeout_s = settings.request_timeout_s
        self.plain_timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=settings.connect_timeout_s,
            sock_read=settings.request_timeout_s,
        )
        self.stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout_s
        )
        tls = httpx.create_ssl_context() if verify is True else verify
        self.proxy, self.proxy_auth = env_proxy(self.url)
        self.session = aiohttp.ClientSession(
            headers=default_headers(settings),
            connector=aiohttp.TCPConnector(limit=settings.max_jobs * 2, ssl=tls),
            timeout=self.plain_timeout,
        )

    async def aclose(self) -> None:
        await self.session.close()


def env_proxy(url: str) -> tuple[str | None, aiohttp.BasicAuth | None]:
    """The proxy the environment names for the API's URL (and its credentials), or none.

    Why once, not aiohttp's `trust_env`: that reads the environment, and ~/.netrc, again in a
    thread for every request, two thread hops a call that cost the worker about 6% of its CPU
    at 512 calls in flight. The netrc lookup is dropped on purpose: the call carries its key,
    and httpx never read netrc either."""
    try:
        proxy, auth = get_env_proxy_for_url(URL(url))
    except LookupError:
        return None, None
    return str(proxy), auth


def _body(raw: bytes) -> bytes | io.BytesIO:
    """aiohttp writes a large bytes body in one go and warns that it may block the loop; a file
    object it sends in chunks (a vision job's body is megabytes)."""
    return io.BytesIO(raw) if len(raw) > LARGE_BODY_BYTES else raw


async def send_message(
    upstream: Upstream,
    body: dict[str, Any],
    *,
    stream: bool = True,
    idle_timeout_s: float = 60.0,
    on_progress: OnProgress | None = None,
    headers: dict[str, str] | None = None,
    on_event: OnEvent | None = None,
    on_open: OnOpen | None = None,
) -> UpstreamReply:
    """Call the API once. Raises an UpstreamError subclass for every failure.

    It streams (`stream: true`) and assembles the Message a non-streaming call would return.
    Why always: one code path for short and long jobs; a job runs as long as events keep
    coming (an idle timeout between events, `idle_timeout_s`, replaces a total read timeout
    that a long generation could never beat); progress can be watched; and the API (like its
    SDK) wants streaming for any call that may run past 10 minutes. Until the answer starts,
    `request_timeout_s` applies. `on_progress(output_tokens, text)` is awaited after each
    content delta. `stream=False` is the plain call, for short jobs (`stream_min_max_tokens`).
    `headers`: the job's own (`call_headers`), over the session's defaults. `on_event(name,
    data)` is awaited with each event before it is applied, and `on_open(request_id)` called
    once the event stream has started, before its events (the drop-in relay).
    """
    started = time.perf_counter()
    try:
        if stream:
            hooks = (on_progress, on_event, on_open)
            return await _stream(upstream, body, started, idle_timeout_s, hooks, headers)
        whole = {k: v for k, v in body.items() if k != "stream"}
        async with upstream.session.post(
            upstream.url,
            data=_body(orjson.dumps(whole)),
            headers=headers,
            timeout=upstream.plain_timeout,
            proxy=upstream.proxy,
            proxy_auth=upstream.proxy_auth,
        ) as answer:
            status, raw, answered = answer.status, await answer.read(), _headers(answer)
    except TimeoutError as exc:
        msg = f"request timed out ({type(exc).__name__})"
        raise UnavailableError(msg, error_type="timeout") from None
    except CONNECTION_ERRORS as exc:
        msg = f"connection failed ({type(exc).__name__})"
        raise UnavailableError(msg, error_type="connection_error") from None
    if status != 200:
        raise classify(status, answered, raw)
    return _reply(parse_message(raw, answered), answered, started)


def _headers(answer: aiohttp.ClientResponse) -> dict[str, str]:
    return header_dict(answer.headers.items())


def _reply(message: dict[str, Any], headers: dict[str, str], started: float) -> UpstreamReply:
    return UpstreamReply(
        message=message,
        request_id=headers.get("request-id"),
        headers=headers,
        latency_ms=(time.perf_counter() - started) * 1000,
    )


async def _stream(
    upstream: Upstream,
    body: dict[str, Any],
    started: float,
    idle_timeout_s: float,
    hooks: Hooks,
    extra_headers: dict[str, str] | None = None,
) -> UpstreamReply:
    # No read timeout in aiohttp: asyncio bounds the wait for the answer to start, then each
    # gap between events (a trickle of bytes that never completes an event is idle too).
    streaming = False
    assembler = MessageAssembler()
    headers: dict[str, str] = {}
    try:
        async with (
            asyncio.timeout(upstream.request_timeout_s) as timer,
            upstream.session.post(
                upstream.url,
                data=_body(orjson.dumps({**body, "stream": True})),
                headers={**(extra_headers or {}), **STREAM_HEADERS},
                timeout=upstream.stream_timeout,
                proxy=upstream.proxy,
                proxy_auth=upstream.proxy_auth,
            ) as answer,
        ):
            headers = _headers(answer)
            if answer.status != 200:
                raise classify(answer.status, headers, await answer.read())
            kind = answer.headers.get("content-type", "").partition(";")[0]
            if "text/event-stream" not in kind:
                raise invalid_response(headers, "not an event stream")
            streaming = True
            await _consume(answer.content, headers, assembler, timer, idle_timeout_s, hooks)
    except aiohttp.ServerTimeoutError:
        raise  # the connect timeout: send_message names it, as for a plain call
    except TimeoutError:
        if not assembler.done:  # done: the server held the connection open after message_stop
            msg = (
                f"no event for {idle_timeout_s:g} s mid-stream (idle timeout)"
                if streaming
                else "request timed out (no answer within request_timeout_s)"
            )
            raise UnavailableError(msg, error_type="timeout") from None
    except CONNECTION_ERRORS as exc:
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
        raise invalid_response(headers, "not a Message") from None
    return _reply(message, headers, started)


async def _consume(
    content: aiohttp.StreamReader,
    headers: dict[str, str],
    assembler: MessageAssembler,
    timer: asyncio.Timeout,
    idle_timeout_s: float,
    hooks: Hooks,
) -> None:
    """Read events until message_stop, each within `idle_timeout_s` of the one before, then
    the end of the body (briefly), so that the connection goes back to the pool."""
    on_progress, on_event, on_open = hooks
    if on_open is not None:
        await on_open(headers.get("request-id"))
    loop = asyncio.get_running_loop()
    # Moving the timer costs more than parsing an event: move it at most every `step`, which
    # keeps the idle timeout exact to within `step` (a tenth of it, at most a second).
    step = min(1.0, idle_timeout_s / 10)
    moved = loop.time()
    timer.reschedule(moved + idle_timeout_s)
    decoder = SSEDecoder()
    async for chunk in content.iter_any():
        for event in decoder.feed(chunk):
            if assembler.done:
                continue
            if (now := loop.time()) - moved >= step:
                moved = now
                timer.reschedule(now + idle_timeout_s)
            if on_event is not None:
                await on_event(event.event, event.data)
            text = _feed(assembler, event, headers)
            if on_progress is not None and event.event == "content_block_delta":
                await on_progress(assembler.output_tokens, text)
            if assembler.done:
                timer.reschedule(loop.time() + step)


def _feed(assembler: MessageAssembler, event: ServerSentEvent, headers: dict[str, str]) -> str:
    """One event into the assembler; protocol breaks are final, `error` events classified."""
    try:
        return assembler.feed(event.event, orjson.loads(event.data) if event.data else {})
    except orjson.JSONDecodeError:
        raise invalid_response(headers, "an event that is not JSON") from None
    except StreamError as exc:
        raise invalid_response(headers, f"a broken event stream ({exc})") from None
    except MidStreamError as exc:
        raise classify_error_event(headers, exc.error) from None
