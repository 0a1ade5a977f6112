"""One image's work for `msgq caption`: the options, its request, its job ID, its row."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from msgq.caption.images import ImagePrepError, Prepared, prepare
from msgq.caption.inputs import Item, render_prompt
from schemas import JobRecord, Lane, Priority
from schemas.response import Message

# Used when neither --prompt nor --prompt-file is given: a plain caption, as training sets want.
DEFAULT_PROMPT = "Describe this image in one sentence."


# Images in Redis at once by default in the realtime lane (`msgq caption` sizes it
# 4 x MSGQ_MAX_JOBS up to this): workers hold hundreds of calls, and each image is megabytes.
REALTIME_WINDOW_MAX = 256


@dataclass
class CaptionOptions:
    inputs: list[str]
    prompt: str = DEFAULT_PROMPT
    model: str = "claude-haiku-4-5"
    max_tokens: int = 200
    out: Path = Path("captions.jsonl")
    sidecar: bool = False
    sidecar_ext: str = ".txt"
    window: int = REALTIME_WINDOW_MAX
    max_side_px: int | None = None
    params: dict[str, Any] = field(default_factory=dict)  # extra request fields (temperature…)
    retry_failed: bool = False  # re-run images whose earlier row failed
    force_sidecar: bool = False  # replace sidecars msgq did not write
    # realtime, batch (Message Batches: half price, ends within 24 h) or auto. Not part of the
    # job ID: the same image, prompt and model give the same caption in either lane.
    lane: Lane = Lane.REALTIME
    priority: Priority = Priority.BULK  # a caption run must not hold up interactive work


@dataclass
class Work:
    """One image ready to submit: its request and deterministic job ID."""

    item: Item
    job_id: str
    request: dict[str, Any]


def job_id_for(content: bytes, prompt: str, options: CaptionOptions) -> str:
    """Same image bytes, prompt, model and parameters → same job: reruns never pay twice."""
    digest = hashlib.sha256(content)
    digest.update(
        orjson.dumps(
            [prompt, options.model, options.max_tokens, options.params], option=orjson.OPT_SORT_KEYS
        )
    )
    return "cap_" + digest.hexdigest()[:40]


def build_work(item: Item, options: CaptionOptions, max_bytes: int) -> Work:
    """Read and prepare one image (CPU-bound: run in a thread). Raises ImagePrepError."""
    if item.is_url:
        source: dict[str, Any] = {"type": "url", "url": item.source}
        prompt = render_prompt(options.prompt, item, None, None)
        content = item.source.encode()
    else:
        try:
            raw = item.path.read_bytes()
        except OSError as exc:
            msg = f"cannot read file: {exc.strerror}"
            raise ImagePrepError(msg) from None
        prepared: Prepared = prepare(
            raw, model=options.model, max_side_px=options.max_side_px, max_bytes=max_bytes
        )
        source = {
            "type": "base64",
            "media_type": prepared.media_type,
            "data": base64.b64encode(prepared.data).decode(),
        }
        prompt = render_prompt(options.prompt, item, prepared.width, prepared.height)
        content = prepared.data
    request = {
        **options.params,
        "model": options.model,
        "max_tokens": options.max_tokens,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "source": source}, {"type": "text", "text": prompt}],
            }
        ],
    }
    return Work(item, job_id_for(content, prompt, options), request)


def shared_row(item: Item, first: dict[str, Any]) -> dict[str, Any]:
    """The row of an image whose bytes another path's job already captioned (same job ID):
    its outcome, with no usage and no cost of its own, since the job was paid for once, in the
    row `shares_job_of` names."""
    cost = None if first.get("cost_usd") is None else 0.0
    owner = first.get("shares_job_of") or first["path"]
    return {**first, "path": item.source, "usage": None, "cost_usd": cost, "shares_job_of": owner}


def row_for(item: Item, record: JobRecord | None, error: str | None = None) -> dict[str, Any]:
    caption = None
    if record is not None and record.result is not None:
        caption = Message.model_validate(record.result).text().strip()
    return {
        "path": item.source,
        "job_id": record.id if record else None,
        "status": record.status.value if record else "failed",
        "caption": caption,
        "usage": record.usage.model_dump() if record and record.usage else None,
        "cost_usd": record.cost_usd if record else None,
        "error": error or (record.error.message if record and record.error else None),
    }
