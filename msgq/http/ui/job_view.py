"""The job page's content: the request summary (with image thumbnails), the result text, and the
attempt timeline.

msgq keeps a job's request only while it may still be sent (the queued payload, until the job
ends) and for a failed job (its kept spec, for `msgq retry`); a succeeded, canceled or expired
job's request is gone, and the page says so. Thumbnails are made here, at most 160 px, only for
this page, and go out as data: URIs; URL images are named, never fetched.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from PIL import Image
from redis.asyncio import Redis

from msgq.keys import Keyspace
from msgq.settings import Settings
from schemas import JobErrorType, JobRecord, JobStatus

THUMB_PX = 160
MAX_THUMBS = 12
MAX_TEXT = 4000
MAX_PIXELS = 50_000_000  # larger images are not decoded for a preview


@dataclass
class Block:
    kind: str  # text | image | other
    text: str = ""
    thumb: str | None = None  # data: URI


@dataclass
class RequestSummary:
    source: str  # a sentence: where msgq holds this request
    params: dict[str, Any]
    system: str
    messages: list[tuple[str, list[Block]]] = field(default_factory=list)


QUEUED_SOURCE = "From the queued job, as it will be sent."
KEPT_SOURCE = "Kept so that the job can be retried."


async def stored_request(
    redis: Redis, keys: Keyspace, job_id: str
) -> tuple[dict[str, Any], str] | None:
    """The request as msgq still holds it, and where from; None when it is no longer kept."""
    payload, spec = await redis.mget([keys.arq_job_key(job_id), keys.spec_key(job_id)])
    sources = ((payload, QUEUED_SOURCE, "k"), (spec, KEPT_SOURCE, None))
    for raw, source, pick in sources:
        if raw is None:
            continue
        try:
            data = orjson.loads(raw)
            data = data[pick] if pick else data
            request = data["request"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue
        if isinstance(request, dict):
            return request, source
    return None


def thumbnail(data_b64: str) -> str | None:
    """A PNG data: URI at most THUMB_PX on a side; None when the bytes are not an image."""
    try:
        raw = base64.b64decode(data_b64, validate=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            if image.width * image.height > MAX_PIXELS:
                return None
            image.draft("RGB", (THUMB_PX, THUMB_PX))  # JPEG: decode at reduced size
            image.thumbnail((THUMB_PX, THUMB_PX))
            out = io.BytesIO()
            image.convert("RGBA" if "A" in image.getbands() else "RGB").save(out, "PNG")
    except (binascii.Error, ValueError, OSError, Image.DecompressionBombWarning):
        return None
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def _blocks(content: Any, budget: list[int]) -> list[Block]:
    if isinstance(content, str):
        return [Block("text", content[:MAX_TEXT])]
    blocks = []
    for item in content if isinstance(content, list) else []:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "text":
            blocks.append(Block("text", str(item.get("text", ""))[:MAX_TEXT]))
        elif kind == "image":
            blocks.append(_image(item.get("source") or {}, budget))
        else:
            blocks.append(Block("other", orjson.dumps(item).decode()[:300]))
    return blocks


def _image(source: dict[str, Any], budget: list[int]) -> Block:
    if source.get("type") == "base64" and budget[0] > 0:
        budget[0] -= 1
        media = str(source.get("media_type", "image"))
        return Block("image", media, thumbnail(str(source.get("data", ""))))
    if source.get("type") == "url":
        return Block("image", f"URL image (not fetched): {source.get('url', '')}"[:500])
    return Block("image", f"{source.get('type', 'image')} image (no preview)")


def summarize(request: dict[str, Any], source: str) -> RequestSummary:
    system = request.get("system")
    if isinstance(system, list):
        system = " ".join(str(b.get("text", "")) for b in system if isinstance(b, dict))
    params = {k: v for k, v in request.items() if k not in ("messages", "system")}
    summary = RequestSummary(source, params, str(system or "")[:MAX_TEXT])
    budget = [MAX_THUMBS]
    for message in request.get("messages") or []:
        if isinstance(message, dict):
            role = str(message.get("role", "?"))
            summary.messages.append((role, _blocks(message.get("content"), budget)))
    return summary


def result_blocks(record: JobRecord) -> list[Block]:
    """The Message's content as text (tool calls and other blocks as their JSON)."""
    return _blocks((record.result or {}).get("content"), [0])


def _event(
    at: datetime, what: str, detail: str = "", *, error: bool = False, untimed: bool = False
) -> dict[str, Any]:
    return {"at": at, "what": what, "detail": detail, "error": error, "untimed": untimed}


# Attempts whose call may have reached the API with no answer stored (`msgq.jobs.records`).
UNANSWERED = frozenset({JobErrorType.CUT, JobErrorType.LOST})
LOST = "ended without a record (the worker was lost or the call cut off before its answer)"


def timeline(record: JobRecord) -> list[dict[str, Any]]:
    """What happened, in order: created, first start, every attempt and how it ended, the
    next try, the end. An attempt counted in `attempts` with nothing recorded (a worker
    killed mid-call) is shown as such, never left out: "attempts 2 of 8" beside one attempt
    hid the lost one."""
    events = [_event(record.created_at, "created")]
    if record.started_at:
        events.append(_event(record.started_at, "first attempt started"))
    events += [event for _, event in sorted(_attempts(record), key=lambda pair: pair[0])]
    if record.next_attempt_at and not record.status.terminal:
        events.append(_event(record.next_attempt_at, "next attempt"))
    if record.finished_at:
        rid = record.upstream_request_id
        detail = f"request_id {rid}" if rid else ""
        events.append(_event(record.finished_at, record.status.value, detail))
    # By time, then as listed: an untimed attempt, placed at the moment of the next recorded
    # one, stays before it.
    order = {id(e): n for n, e in enumerate(events)}
    return sorted(events, key=lambda e: (e["at"], order[id(e)]))


def _attempts(record: JobRecord) -> list[tuple[int, dict[str, Any]]]:
    """(attempt number, event) for each recorded failure, then for the attempts
    `attempt_errors` does not hold: the last one's outcome when the record says it
    (succeeded, failed, running), every other one as lost."""
    found = []
    for e in record.attempt_errors:
        code = f" {e.status_code}" if e.status_code else ""
        # Attempt 0: ended before any call (a budget, a deadline), so no attempt failed.
        lead = f"attempt {e.attempt} failed: " if e.attempt else "ended before any attempt: "
        if e.attempt and e.type in UNANSWERED:  # the call may have been answered: not "failed"
            lead = f"attempt {e.attempt} "
        detail = f"{e.message} (request_id {e.request_id})" if e.request_id else e.message
        found.append((e.attempt, _event(e.at, f"{lead}{e.type}{code}", detail, error=True)))
    recorded = {e.attempt: e.at for e in record.attempt_errors}
    for n in range(1, record.attempts + 1):
        if n in recorded:
            continue
        if n == record.attempts and (last := _last_attempt(record, n)) is not None:
            found.append((n, last))
            continue
        later = [at for k, at in recorded.items() if k > n]
        anchor = min(later) if later else record.finished_at or record.next_attempt_at
        lost = _event(anchor or _now(), f"attempt {n} {LOST}", error=True, untimed=True)
        found.append((n, lost))
    return found


def _now() -> datetime:
    return datetime.now(UTC)


def _last_attempt(record: JobRecord, n: int) -> dict[str, Any] | None:
    if record.status is JobStatus.SUCCEEDED and record.finished_at:
        return _event(record.finished_at, f"attempt {n} succeeded")
    if record.status is JobStatus.IN_PROGRESS:
        return _event(_now(), f"attempt {n} running", untimed=True)
    if record.status is JobStatus.FAILED and record.error and record.finished_at:
        code = f" {record.error.status_code}" if record.error.status_code else ""
        what = f"attempt {n} failed: {record.error.type}{code}"
        return _event(record.finished_at, what, record.error.message, error=True)
    return None


def trace_url(settings: Settings, record: JobRecord) -> str | None:
    """The job's trace in the operator's tracing backend (MSGQ_TRACE_URL_TEMPLATE)."""
    if not settings.trace_url_template or not record.trace_id:
        return None
    # A trace ID is 32 hex digits (msgq.trace_context checks it), so it needs no escaping here.
    return settings.trace_url_template.replace("{trace_id}", record.trace_id)
