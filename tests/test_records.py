"""The pure record transitions (msgq.jobs.records), without Redis: each rule on its own."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from msgq.errors import InvalidJobError
from msgq.extras import MissingExtraError, require
from msgq.jobs import records
from schemas import JobError, JobRecord, JobSpec, JobStatus

BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 10,
    "messages": [{"role": "user", "content": "hi"}],
}
ERROR = JobError(type="overloaded_error", message="busy", status_code=529, retryable=True)


def record(**update: object) -> JobRecord:
    base = records.new_record(
        "j1", JobSpec(request=BODY), created_at=datetime.now(UTC), default_max_attempts=3
    )
    return base.model_copy(update=update)


def test_new_record_takes_spec_and_defaults() -> None:
    spec = JobSpec(request=BODY, metadata={"a": 1}, max_attempts=5)
    r = records.new_record(
        "t:j", spec, created_at=datetime.now(UTC), default_max_attempts=8, tenant="t"
    )
    assert (r.status, r.max_attempts, r.model, r.metadata, r.tenant) == (
        JobStatus.QUEUED,
        5,
        "claude-haiku-4-5",
        {"a": 1},
        "t",
    )


def test_begun_counts_an_attempt_and_keeps_first_start() -> None:
    first = records.begun(record())
    again = records.begun(first.model_copy(update={"status": JobStatus.RETRYING}))
    assert (first.status, first.attempts) == (JobStatus.IN_PROGRESS, 1)
    assert again.attempts == 2 and again.started_at == first.started_at


def test_begun_honours_a_cancel_request() -> None:
    assert records.begun(record(cancel_requested=True)).status is JobStatus.CANCELED


def test_retry_scheduled_retrying_expired_or_canceled() -> None:
    soon = datetime.now(UTC) + timedelta(seconds=5)
    running = record(status=JobStatus.IN_PROGRESS, attempts=1)
    retrying = records.retry_scheduled(running, next_at=soon, error=ERROR)
    assert retrying.status is JobStatus.RETRYING and retrying.next_attempt_at == soon
    late = running.model_copy(update={"deadline": soon - timedelta(seconds=1)})
    assert records.retry_scheduled(late, next_at=soon, error=ERROR).status is JobStatus.EXPIRED
    asked = running.model_copy(update={"cancel_requested": True})
    assert records.retry_scheduled(asked, next_at=soon, error=ERROR).status is JobStatus.CANCELED


def test_requeued_refunds_the_attempt_unless_canceled() -> None:
    running = record(status=JobStatus.IN_PROGRESS, attempts=2)
    back = records.requeued(running, error=ERROR)
    assert (back.status, back.attempts, back.error) == (JobStatus.QUEUED, 1, ERROR)
    asked = running.model_copy(update={"cancel_requested": True})
    assert records.requeued(asked, error=ERROR).status is JobStatus.CANCELED


def test_crashed_counts_once_and_fails_when_spent() -> None:
    running = record(status=JobStatus.IN_PROGRESS, attempts=1)
    crashed = records.crashed(running, error=ERROR, backoff=lambda n: 1.0)
    assert (crashed.status, crashed.attempts) == (JobStatus.RETRYING, 1)
    queued = record(attempts=2)  # crashed before the attempt began: that counts as one
    spent = records.crashed(queued, error=ERROR, backoff=lambda n: 1.0)
    assert (spent.status, spent.attempts) == (JobStatus.FAILED, 3)


def test_released_only_moves_in_progress_back() -> None:
    assert records.released(record()) is None
    back = records.released(record(status=JobStatus.IN_PROGRESS, attempts=1), cut_attempt=1)
    assert back is not None and (back.status, back.attempts) == (JobStatus.QUEUED, 0)


def test_released_notes_the_cut_attempt_and_refunds_it() -> None:
    running = record(status=JobStatus.IN_PROGRESS, attempts=2)
    back = records.released(running, cut_attempt=2)
    assert back is not None and (back.status, back.attempts) == (JobStatus.QUEUED, 1)
    [cut] = back.attempt_errors
    assert (cut.attempt, cut.type, cut.message) == (2, "cut", records.CUT_MESSAGE)
    asked = running.model_copy(update={"cancel_requested": True})
    canceled = records.released(asked, cut_attempt=2)
    assert canceled is not None and (canceled.status, canceled.attempts) == (JobStatus.CANCELED, 2)
    assert [(e.attempt, e.type) for e in canceled.attempt_errors] == [(2, "cut")]


def test_released_notes_an_earlier_workers_attempt_lost_and_charged() -> None:
    """The run was stopped before it began its own attempt: the one in progress was lost."""
    back = records.released(record(status=JobStatus.IN_PROGRESS, attempts=1), cut_attempt=None)
    assert back is not None and (back.status, back.attempts) == (JobStatus.QUEUED, 1)
    assert [(e.attempt, e.type) for e in back.attempt_errors] == [(1, "lost")]


def test_begun_notes_an_attempt_left_in_progress_as_lost() -> None:
    again = records.begun(record(status=JobStatus.IN_PROGRESS, attempts=1))
    assert (again.status, again.attempts) == (JobStatus.IN_PROGRESS, 2)
    [lost] = again.attempt_errors
    assert (lost.attempt, lost.type, lost.message) == (1, "lost", records.LOST_MESSAGE)
    assert records.begun(record(status=JobStatus.RETRYING, attempts=1)).attempt_errors == []
    why = JobError(type="lost", message="why", request_id="req_1")
    known = records.begun(record(status=JobStatus.IN_PROGRESS, attempts=1), lost_because=why)
    assert [(e.attempt, e.message, e.request_id) for e in known.attempt_errors] == [
        (1, "why", "req_1")
    ]
    asked = record(status=JobStatus.IN_PROGRESS, attempts=1, cancel_requested=True)
    assert [e.type for e in records.begun(asked).attempt_errors] == ["lost"]


def test_cancel_asked_ends_waiting_jobs_and_flags_running_ones() -> None:
    assert records.cancel_asked(record()).status is JobStatus.CANCELED
    flagged = records.cancel_asked(record(status=JobStatus.IN_PROGRESS))
    assert flagged.status is JobStatus.IN_PROGRESS and flagged.cancel_requested


def test_reopened_only_for_failed_jobs_outside_batches() -> None:
    failed = records.ended(record(attempts=3), JobStatus.FAILED, error=ERROR)
    fresh = records.reopened(failed)
    assert fresh is not None and (fresh.status, fresh.attempts, fresh.error) == (
        JobStatus.QUEUED,
        0,
        None,
    )
    assert records.reopened(failed.model_copy(update={"batch_id": "b"})) is None
    assert records.reopened(records.ended(record(), JobStatus.SUCCEEDED)) is None


def test_build_spec_names_every_field_error() -> None:
    with pytest.raises(InvalidJobError) as caught:
        records.build_spec({"model": "claude-haiku-4-5", "messages": []})
    locs = {e["loc"] for e in caught.value.errors}
    assert "messages" in locs and len(locs) >= 2


def test_missing_extra_names_the_extra() -> None:
    with pytest.raises(MissingExtraError, match=r"pip install 'msgq\[api\]'"):
        require("api", "the msgq HTTP API", "no_such_module_for_msgq")


def test_public_import_surface_needs_no_worker_libraries() -> None:
    """`from msgq import Client` works and registers no worker metrics, loads no httpx."""
    code = (
        "import sys\n"
        "from msgq import Client, JobRecord, JobStatus, Settings, UpstreamError\n"
        "import msgq\n"
        "assert set(msgq.__all__) >= {'Client', 'JobRecord', 'JobStatus', 'Settings'}\n"
        "print(sorted(m for m in ('prometheus_client', 'httpx', 'fastapi', 'aiohttp')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
