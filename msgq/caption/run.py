"""`msgq caption`: images → windowed jobs → JSONL rows and sidecars; resumable, deduplicated."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from msgq.caption.images import ImagePrepError
from msgq.caption.inputs import Item, iter_items
from msgq.caption.output import NOT_RUN, CaptionLog, Sidecars
from msgq.caption.work import CaptionOptions, Work, build_work, row_for, shared_row
from msgq.client import Client, Submitted
from msgq.errors import InvalidJobError
from msgq.jobs.endings import Endings
from msgq.jobs.store import JobStore
from msgq.settings import Settings
from schemas import JobStatus

RERUNS_MAX = 20  # reruns of one canceled image before its last ID is reported as is

# CaptionOptions lives in work.py; it is re-exported here, where callers start a run.
__all__ = ["CaptionOptions", "CaptionRun", "Tally"]


@dataclass
class Tally:
    """Running totals for the progress bar and the summary."""

    done: int = 0
    failed: int = 0
    skipped: int = 0  # succeeded in an earlier run
    failed_before: int = 0  # failed in an earlier run and not retried (--retry-failed)
    retrying: int = 0
    in_flight: int = 0  # submitted by this run and not yet ended (queued, running, retrying)
    running: int = 0  # of those, in progress at the last look
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    started: float = field(default_factory=time.monotonic)


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
        self.store = JobStore.from_settings(redis, settings)
        self.endings = Endings(redis, self.store)
        self.tally = Tally()
        self.sidecars = (
            Sidecars(options.out, options.sidecar_ext, force=options.force_sidecar)
            if options.sidecar
            else None
        )
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
        retry = self.options.retry_failed
        if not item.is_url and item.source in self.log.failed_paths and not retry:
            self._count_earlier(failed=True)
            return
        refusal = self.sidecars.refusal(item.path) if self.sidecars and not item.is_url else None
        if refusal:  # refused before anything is spent
            self._write(row_for(item, None, refusal))
            return
        try:
            work = await asyncio.to_thread(
                build_work, item, self.options, self.settings.max_image_bytes
            )
        except ImagePrepError as exc:
            self._write(row_for(item, None, str(exc)))
            return
        if await self._done_before(item, work):
            return
        if await self._failed_before(work):
            return
        if work.job_id in self.pending:  # the same image twice: one job, two rows
            self.pending[work.job_id].append(item)
            return
        try:
            job = await self._submit(work, item)
        except InvalidJobError as exc:
            self._write(row_for(item, None, str(exc)))
            return
        if job is None:  # done under a rerun ID in an earlier run
            self._count_earlier(failed=False)
            return
        self.pending[job.id] = [item]
        self._changed()  # in flight now: a run's first minutes are not "0 done" and silent
        if job.record.status.terminal:
            await self._finish(job.id)

    async def _done_before(self, item: Item, work: Work) -> bool:
        """True when the output file already has this job's answer: this image's row counts
        as skipped; another path's (the same bytes) gives this image its own row from it."""
        earlier = self.log.done_row(work.job_id)
        if earlier is None:
            return False
        this_path = self.log.done_paths.get(item.source) == work.job_id
        if this_path or earlier.get("path") == item.source:
            self._count_earlier(failed=False)
        else:  # paid for once, in the earlier row
            await self._emit(item, shared_row(item, earlier))
        return True

    def _changed(self) -> None:
        self.tally.in_flight = len(self.pending)
        self.on_change(self.tally)

    async def _failed_before(self, work: Work) -> bool:
        """True (counted) when an earlier run failed it and --retry-failed is not given."""
        if work.job_id not in self.log.failed_ids or work.job_id in self.pending:
            return False
        if not self.options.retry_failed:
            self._count_earlier(failed=True)
            return True
        # failed → queued again from its kept request; anything else (canceled, or past
        # retention) is left to `_submit`, which returns it or starts it afresh.
        await self.client.retry(work.job_id)
        return False

    async def _submit(self, work: Work, item: Item) -> Submitted | None:
        """Submit under the image's ID; one that was canceled or expired is sent again under
        `ID.rN`, the first N not canceled or expired, so reruns stay idempotent (a retry of
        the old ID cannot bring back a canceled job: its request was not kept)."""
        job_id = work.job_id
        for rerun in range(1, RERUNS_MAX + 1):
            job = await self.client.submit(
                work.request,
                job_id=job_id,
                metadata={"path": item.source[-512:]},
                lane=self.options.lane,
                priority=self.options.priority,
            )
            if job.record.status.value not in NOT_RUN:
                break
            job_id = f"{work.job_id}.r{rerun}"
            if job_id in self.log.done:
                return None
        return job

    def _count_earlier(self, *, failed: bool) -> None:
        if failed:
            self.tally.failed_before += 1
        else:
            self.tally.skipped += 1
        self._changed()

    async def still_running(self) -> list[str]:
        """Job IDs this run submitted that have not ended (after Ctrl-C: still in the fleet)."""
        ids = list(self.pending)
        records = await self.store.get_many(ids)
        return [i for i, r in zip(ids, records, strict=True) if r and not r.status.terminal]

    async def _finish(self, job_id: str) -> None:
        record = await self.store.get(job_id)
        self.draining.add(job_id)
        first: dict[str, Any] | None = None
        for item in self.pending.pop(job_id, []):
            # Paths with the same bytes share one job: its usage and cost go in the first row.
            row = row_for(item, record) if first is None else shared_row(item, first)
            first = first or row
            await self._emit(item, row)

    async def _emit(self, item: Item, row: dict[str, Any]) -> None:
        """Write the row, and the sidecar of a caption."""
        self._write(row)
        if self.sidecars and row["status"] == "succeeded" and not item.is_url:
            caption = (row["caption"] or "") + "\n"
            await asyncio.to_thread(self.sidecars.write, item.path, caption)

    async def _sweep(self) -> None:
        """Catch endings a dropped subscription missed, and count the jobs now retrying."""
        ids = list(self.pending)
        records = await self.store.get_many(ids)
        self.tally.retrying = sum(1 for r in records if r and r.status is JobStatus.RETRYING)
        self.tally.running = sum(1 for r in records if r and r.status is JobStatus.IN_PROGRESS)
        for job_id, record in zip(ids, records, strict=True):
            if record is not None and record.status.terminal:
                await self._finish(job_id)
        self._changed()

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
        self._changed()
