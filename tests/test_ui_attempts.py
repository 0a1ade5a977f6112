"""The job page shows every attempt the record counts, with how it ended (issue 34, item 9:
after a worker's kill -9 it said "attempts 2 of 8" beside a timeline of one attempt)."""

from __future__ import annotations

import functools
import re
from datetime import timedelta

import httpx

from msgq.client import Client
from msgq.jobs import records
from msgq.jobs.store import JobStore
from schemas import JobError, JobStatus
from tests.conftest import KEY_A
from tests.test_ui import sign_in, text_request, ui, ui_settings

__all__ = ["ui", "ui_settings"]  # fixtures

OVERLOADED = JobError(type="overloaded_error", message="Overloaded", status_code=529)


def timeline_of(page: str) -> list[str]:
    """The timeline's entries as text, in order."""
    section = page.split('<ol class="timeline">', 1)[1].split("</ol>", 1)[0]
    items = re.findall(r"<li[^>]*>(.*?)</li>", section, re.S)
    return [re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", item)).strip() for item in items]


async def test_a_lost_attempt_and_the_final_one_are_both_on_the_timeline(
    ui: httpx.AsyncClient, client: Client, store: JobStore
) -> None:
    """Attempt 1 picked up by a worker that was killed (nothing recorded then), attempt 2
    succeeded: the timeline shows both, the first as lost (noted when attempt 2 began)."""
    job = await client.submit(text_request(), tenant="tenant-a")
    await store.update(job.id, records.begun)  # the killed worker's pickup
    await store.update(job.id, records.begun)  # picked up again once its lock lapsed
    await store.update(
        job.id, lambda r: records.ended(r, JobStatus.SUCCEEDED, result={"content": []})
    )
    await sign_in(ui, KEY_A)
    entries = timeline_of((await ui.get(f"/ui/jobs/{job.id}")).text)
    attempts = [
        re.sub(r"^.*?(?=attempt \d)", "", e) for e in entries if re.search(r"attempt \d", e)
    ]
    assert attempts == [
        f"attempt 1 lost {records.LOST_MESSAGE}",
        "attempt 2 succeeded",
    ], entries
    assert entries[-1].endswith("succeeded")


async def test_recorded_failures_and_gaps_between_them_are_in_attempt_order(
    ui: httpx.AsyncClient, client: Client, store: JobStore
) -> None:
    """Three attempts, attempt 1 lost (noted when attempt 2 began), the second's error
    recorded, the third's outcome not (a record forced so, as older workers left them), now
    retrying: 1 as lost, 2 with its error, 3 as ended without a record, then the next one."""
    job = await client.submit(text_request(), tenant="tenant-a")
    later = records.utcnow() + timedelta(seconds=30)
    retry = functools.partial(records.retry_scheduled, next_at=later, error=OVERLOADED)
    await store.update(job.id, records.begun)
    await store.update(job.id, records.begun)
    await store.update(job.id, retry)
    await store.update(job.id, records.begun)
    await store.update(
        job.id, lambda r: records.requeued(r, error=None).model_copy(update={"attempts": 3})
    )
    await store.update(job.id, lambda r: r.model_copy(update={"next_attempt_at": later}))
    await sign_in(ui, KEY_A)
    page = (await ui.get(f"/ui/jobs/{job.id}")).text
    assert "3 of 8" in page
    entries = [e for e in timeline_of(page) if "attempt" in e and "first" not in e]
    assert [re.sub(r"^.*?(attempt \d|next attempt)", r"\1", e)[:9] for e in entries] == [
        "attempt 1",
        "attempt 2",
        "attempt 3",
        "next atte",
    ], entries
    assert "attempt 2 failed: overloaded_error 529" in entries[1]
    assert "attempt 1 lost" in entries[0] and "ended without a record" in entries[2]
