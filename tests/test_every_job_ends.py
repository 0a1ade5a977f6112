"""Issue 10: every job ends, is paid once, and its record tells the truth (regressions)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from msgq.arq_format import UNREACHABLE_TIMEOUT_S
from msgq.client import Client
from msgq.settings import Settings
from schemas import JobStatus
from tests.conftest import KEYS, Sim, StartWorker, eventually
from tests.test_crash import spawn_worker
from worker.job.task import ceiling_s
from worker.main import build_worker
from worker.services import SERVICES

BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 20,
    "messages": [{"role": "user", "content": "end me truthfully"}],
}


def test_arq_timeout_is_beyond_every_bound_msgq_sets() -> None:
    """arq's timeout deletes a job without finishing its record; it must never be reached."""
    settings = Settings(_env_file=None, job_timeout_s=900)  # type: ignore[call-arg]
    worker = build_worker(settings, handle_signals=False)
    assert worker.job_timeout_s == UNREACHABLE_TIMEOUT_S > 1000 * ceiling_s(settings)


async def test_saturated_worker_hands_jobs_back_and_all_end(
    settings: Settings, client: Client, sim: Sim, start_worker: StartWorker, redis: Redis
) -> None:
    """The reproduced case, scaled: concurrency held at 1 while calls take most of the job
    timeout. Jobs that cannot get a slot in time go back to the queue; every one succeeds,
    none is left `queued` without its arq job."""
    custom = settings.model_copy(update={"job_timeout_s": 1.0, "max_slot_wait_s": 0.5})
    sim.script(*[{"delay_s": 0.3}] * 12)
    worker = await start_worker(custom)

    async def started() -> bool:
        return SERVICES in worker.ctx

    await eventually(started)
    concurrency = worker.ctx[SERVICES].concurrency
    concurrency.limit = concurrency.max_limit = 1  # as after a run of 429s
    ids = [(await client.submit(BODY)).id for _ in range(12)]
    records = [await client.wait(i, timeout=60) for i in ids]
    assert {r.status for r in records} == {JobStatus.SUCCEEDED}
    assert all(r.attempts == 1 for r in records)  # a hand-back is not an attempt
    assert not [i for i in ids if await redis.exists(KEYS.arq_job_key(i))]


async def test_cancel_after_the_worker_died_mid_call_ends_canceled(
    settings: Settings, client: Client, sim: Sim, tmp_path: Path
) -> None:
    """SIGKILL mid-call, then cancel: the next worker's abort ends the job `canceled`, not
    `failed` with a payload error, and the API is not called again."""
    sim.script({"delay_s": 60})
    first = spawn_worker(settings, tmp_path / "a.log")
    try:
        job = await client.submit(BODY)

        async def held() -> bool:
            return sim.received == 1

        await eventually(held)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    flagged = await client.cancel(job.id)
    assert flagged.status is JobStatus.IN_PROGRESS and flagged.cancel_requested
    second = spawn_worker(settings, tmp_path / "b.log")
    try:
        record = await client.wait(job.id, timeout=30)
    finally:
        from tests.conftest import stop_workers

        stop_workers(second)
    assert record.status is JobStatus.CANCELED and record.error is None
    assert sim.received == 1


def test_a_bad_prices_file_stops_start_up_with_one_line(tmp_path: Path) -> None:
    """A broken MSGQ_PRICES_FILE is refused when settings load, not after every paid call."""
    bad = tmp_path / "prices.toml"
    bad.write_text('[prices.claude-haiku]\ninput = "cheap"\n')
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, prices_file=bad)  # type: ignore[call-arg]
    message = str(caught.value)
    assert "prices_file" in message and "not a valid prices file" in message
