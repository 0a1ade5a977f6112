"""`msgq caption`: images → windowed jobs → JSONL rows and sidecars; resumable, deduplicated."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from schemas import JobRecord, JobStatus
from schemas.response import Message
from worker.caption.images import ImagePrepError, Prepared, prepare
from worker.caption.inputs import Item, iter_items, render_prompt
from worker.caption.output import CaptionLog, sidecar_path, write_atomically
from worker.client import Client
from worker.endings import Endings
from worker.errors import InvalidJobError
from worker.settings import Settings
from worker.store import JobStore


@dataclass
class CaptionOptions:
    inputs: list[str]
    prompt: str
    model: str = "claude-haiku-4-5"
    max_tokens: int = 200
    out: Path = Path("captions.jsonl")
    sidecar: bool = False
    sidecar_ext: str = ".txt"
    window: int = 64
    max_side_px: int | None = None
    params: dict[str, Any] = field(default_factory=dict)  # extra request fields (temperature…)


@dataclass
class Tally:
    """Running totals for the progress bar and the summary."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    retrying: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    started: float = field(default_factory=time.monotonic)


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


class CaptionRun:
    """Keeps at most `window` caption jobs in Redis; writes each row as its job ends."""

    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        options: CaptionOptions,
        log: CaptionLog,
        on_change: Callable[[Tally], None] = lambda _: None,
    ) -> None:
        self.settings, self.options, self.log, self.on_change = settings, options, log, on_change
        self.client = Client(redis, settings)  # submit: validation and the enqueue transaction
        self.store = JobStore(
            redis, queue_name=settings.queue_name, retention_s=settings.retention_s
        )
        self.endings = Endings(redis, self.store)
        self.tally = Tally()
        self.pending: dict[str, list[Item]] = {}
        # Ended, but arq has not yet deleted the job's payload: still counts toward the window.
        self.draining: set[str] = set()

    async def run(self) -> Tally:
        await self.endings.start()  # before submitting: no ending is missed
        ended = self.endings.listen()
        try:
            return await self._loop(ended)
        finally:
            self.endings.unlisten(ended)
            await self.endings.stop()

    async def _loop(self, ended: asyncio.Queue[str]) -> Tally:
        items = iter_items(self.options.inputs)
        exhausted = False
        last_sweep = time.monotonic()
        while True:
            await self._drain()
            while not exhausted and self._in_redis() < self.options.window:
                item = next(items, None)
                if item is None:
                    exhausted = True
                else:
                    await self._start(item)
            if not self.pending and exhausted:
                return self.tally
            wait_s = 0.02 if self.draining else 1.0
            with contextlib.suppress(TimeoutError):
                job_id = await asyncio.wait_for(ended.get(), wait_s)
                if job_id in self.pending:
                    await self._finish(job_id)
            if time.monotonic() - last_sweep >= 1.0:
                await self._sweep()
                last_sweep = time.monotonic()

    def _in_redis(self) -> int:
        return len(self.pending) + len(self.draining)

    async def _drain(self) -> None:
        if not self.draining:
            return
        ids = list(self.draining)
        present = await self.store.payloads_present(ids)
        self.draining -= {job_id for job_id, left in zip(ids, present, strict=True) if not left}

    async def _start(self, item: Item) -> None:
        if not item.is_url and item.source in self.log.failed_paths:
            self.tally.skipped += 1
            return
        try:
            work = await asyncio.to_thread(
                build_work, item, self.options, self.settings.max_image_bytes
            )
        except ImagePrepError as exc:
            self._write(row_for(item, None, str(exc)))
            return
        if work.job_id in self.log.done:
            self.tally.skipped += 1
            self.on_change(self.tally)
            return
        if work.job_id in self.pending:  # the same image twice: one job, two rows
            self.pending[work.job_id].append(item)
            return
        try:
            job = await self.client.submit(
                work.request, job_id=work.job_id, metadata={"path": item.source[-512:]}
            )
        except InvalidJobError as exc:
            self._write(row_for(item, None, str(exc)))
            return
        self.pending[work.job_id] = [item]
        if job.record.status.terminal:
            await self._finish(work.job_id)

    async def _finish(self, job_id: str) -> None:
        record = await self.store.get(job_id)
        self.draining.add(job_id)
        for item in self.pending.pop(job_id, []):
            row = row_for(item, record)
            self._write(row)
            if self.options.sidecar and row["status"] == "succeeded" and not item.is_url:
                path = sidecar_path(item.path, self.options.sidecar_ext)
                await asyncio.to_thread(write_atomically, path, (row["caption"] or "") + "\n")

    async def _sweep(self) -> None:
        """Catch endings a dropped subscription missed, and count the jobs now retrying."""
        ids = list(self.pending)
        records = await self.store.get_many(ids)
        self.tally.retrying = sum(1 for r in records if r and r.status is JobStatus.RETRYING)
        for job_id, record in zip(ids, records, strict=True):
            if record is not None and record.status.terminal:
                await self._finish(job_id)
        self.on_change(self.tally)

    def _write(self, row: dict[str, Any]) -> None:
        self.log.append(row)
        t = self.tally
        if row["status"] == "succeeded":
            t.done += 1
        else:
            t.failed += 1
        usage = row["usage"] or {}
        t.input_tokens += usage.get("input_tokens", 0)
        t.output_tokens += usage.get("output_tokens", 0)
        t.cost_usd += row["cost_usd"] or 0.0
        self.on_change(t)
