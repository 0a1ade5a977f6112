"""A streaming attempt's side effects, throttled so that Redis is never written per token.

- the record's `progress` (output tokens so far): at most once a second, from the second second;
- the text, published on the job's progress channel for live watchers: up to ten times a
  second while someone listens, once a second while nobody does (PUBLISH says how many heard),
  and not at all for a stream shorter than a tenth of a second (its record has it all);
- the limiter's output reservation, settled to what has been produced at each record write:
  the API counts OTPM as tokens are made, so a long job must not hold its whole `max_tokens`.

All of it is best effort: a Redis blip costs a watcher some text, never the paid-for answer.
`send_with_progress` is the attempt's call: bounded by the ceiling and the job's deadline.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from redis.exceptions import RedisError

from msgq.channels import publish
from schemas import JobRecord, MessageRequest
from worker.job.relay import Relay
from worker.services import Services
from worker.upstream.client import UpstreamReply, call_headers, send_message

log = structlog.get_logger("msgq.job")
RECORD_S = 1.0
PUBLISH_S = 0.1
PROBE_S = 1.0


class Progress:
    """`await progress(output_tokens, text)` per content delta; `await progress.close()` after."""

    def __init__(self, services: Services, record: JobRecord, request: MessageRequest) -> None:
        self.services = services
        self.job_id = record.id
        self.attempt = record.attempts
        self.model = request.model
        self.reserved = request.max_tokens  # what the limiter took for this call's output
        self.held = request.max_tokens  # what it holds now
        self.tokens = 0
        self.offset = 0  # characters of this attempt's text published so far
        self.pending: list[str] = []
        self.recorded_at = self.published_at = time.monotonic()
        self.listened = True  # until a publish reaches nobody
        self.published = False
        self.recorded = False
        # The record as the attempt began it, and its JSON as last written: `progress` goes in
        # by compare-and-set (with the worker's other writes), and out again at the end, so
        # the attempt's terminal write still finds the record it expects. None: moved on.
        self.record: JobRecord = record
        self.raw: bytes | None = record.model_dump_json().encode()
        self.begun = self.raw

    async def __call__(self, tokens: int, text: str) -> None:
        self.tokens = tokens
        if text:
            self.pending.append(text)
        now = time.monotonic()
        if self.pending and now - self.published_at >= (PUBLISH_S if self.listened else PROBE_S):
            await self._publish(now)
        if now - self.recorded_at >= RECORD_S:
            self.recorded_at = now
            await self._record()

    async def _publish(self, now: float) -> None:
        text = "".join(self.pending)
        self.pending.clear()
        payload = {
            "attempt": self.attempt,
            "offset": self.offset,
            "text": text,
            "output_tokens": self.tokens,
        }
        self.offset += len(text)
        self.published_at, self.published = now, True
        try:
            keys = self.services.settings.keys
            heard = await publish(
                self.services.redis, keys, keys.progress_channel(self.job_id), orjson.dumps(payload)
            )
        except RedisError as exc:
            log.warning("job.progress_unpublished", error=type(exc).__name__)
            return
        self.listened = heard > 0

    async def _record(self) -> None:
        try:
            await self._hold(min(self.tokens, self.reserved))
            await self._set_progress(self.tokens)
            self.recorded = True
        except RedisError as exc:
            log.warning("job.progress_unrecorded", error=type(exc).__name__)

    async def _set_progress(self, tokens: int | None) -> None:
        store = self.services.store
        if self.raw is not None:
            new = self.record.model_copy(update={"progress": tokens})
            raw = self.begun if tokens is None else new.model_dump_json().encode()
            if raw is not None and await store.swap(self.job_id, self.raw, raw):
                self.record, self.raw = new, raw
                return
            self.raw = None  # a cancel request, say: from now on read the record each time
        await store.set_progress(self.job_id, tokens)

    async def _hold(self, tokens: int) -> None:
        """Make the limiter hold `tokens` of output for this call (refund or charge the rest)."""
        if tokens != self.held:
            await self.services.limiter.settle(
                self.model,
                input_delta=0,
                output_delta=self.held - tokens,
                group=self.services.ledgers.group,
            )
            self.held = tokens

    async def close(self) -> None:
        """Flush the text, clear `progress`, and hold `max_tokens` again, so the attempt's own
        final settlement (max_tokens less the usage) stays exact."""
        try:
            if self.pending and self.listened and self.published:
                await self._publish(time.monotonic())
            if self.recorded:
                await self._set_progress(None)
            await self._hold(self.reserved)
        except RedisError as exc:
            log.warning("job.progress_unsettled", error=type(exc).__name__)


async def send_with_progress(
    services: Services, record: JobRecord, request: MessageRequest, body: dict[str, Any]
) -> UpstreamReply:
    """One call, streamed (see `send_message`), reporting progress as it goes.

    However long it keeps streaming, the attempt is bounded by `job_timeout_s` (the ceiling)
    and by the job's deadline: TimeoutError past either.
    """
    s = services.settings
    budget_s = s.job_timeout_s
    if record.deadline is not None:
        budget_s = min(budget_s, max(0.0, (record.deadline - datetime.now(UTC)).total_seconds()))
    progress = Progress(services, record, request)
    # A caller that asked for a stream (the drop-in API) hears the events as they come.
    relay = (
        Relay(services.redis, services.settings.keys, record.id, record.attempts)
        if request.stream
        else None
    )
    failure: BaseException | None = None
    try:
        async with asyncio.timeout(budget_s):
            return await send_message(
                services.upstream,
                body,
                stream=bool(request.stream) or request.max_tokens >= s.stream_min_max_tokens,
                on_event=relay,
                on_open=None if relay is None else relay.opened,
                idle_timeout_s=s.stream_idle_timeout_s,
                on_progress=progress,
                # The version and betas the job was written for (the record keeps them).
                headers=call_headers(
                    s,
                    anthropic_version=record.anthropic_version,
                    betas=record.betas,
                    workspace_id=record.workspace_id,
                    api_headers=record.api_headers,
                ),
            )
    except BaseException as exc:
        failure = exc
        raise
    finally:
        await progress.close()
        if relay is not None:
            await relay.close(failure)
