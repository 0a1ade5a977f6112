"""An idle worker is woken by work instead of polling for it (issues 32 and 33): every test
sets the idle poll to a minute, so a job that starts in seconds was announced, polled for
when it came due, or picked up because a slot came free; never found by a poll."""

from __future__ import annotations

import asyncio
import time

import pytest

from msgq.client import Client
from msgq.connections import connect
from msgq.settings import Settings
from schemas import JobStatus
from tests.conftest import Sim, StartWorker

BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 20,
    "messages": [{"role": "user", "content": "hello"}],
}
LONG_POLL_S = 60.0


@pytest.fixture
def no_poll(settings: Settings) -> Settings:
    return settings.model_copy(update={"poll_delay_s": LONG_POLL_S})


@pytest.mark.parametrize("scheduler", [True, False])
async def test_a_submitted_job_wakes_an_idle_worker(
    no_poll: Settings, start_worker: StartWorker, scheduler: bool
) -> None:
    """Through the dispatcher (it publishes as it admits) or straight into arq's queue (the
    submit publishes in its own transaction)."""
    custom = no_poll.model_copy(update={"scheduler": scheduler})
    await start_worker(custom)
    async with Client(connect(custom.redis_url), custom) as client:
        for _ in range(3):  # the worker is idle again between them
            started = time.monotonic()
            job = await client.submit(BODY)
            assert (await client.wait(job.id, timeout=20)).status is JobStatus.SUCCEEDED
            assert time.monotonic() - started < LONG_POLL_S / 4


async def test_a_retry_is_polled_for_when_it_comes_due(
    no_poll: Settings, start_worker: StartWorker, sim: Sim
) -> None:
    """A retryable error defers the job by its backoff (0.05-0.2 s here): the worker's due-scan
    saw when it comes due, and it polls then."""
    sim.script({"status": 529}, {"status": 529})
    await start_worker(no_poll)
    async with Client(connect(no_poll.redis_url), no_poll) as client:
        job = await client.submit(BODY)
        record = await client.wait(job.id, timeout=LONG_POLL_S / 4)
    assert record.status is JobStatus.SUCCEEDED and record.attempts == 3


async def test_a_full_worker_takes_the_next_job_when_a_slot_frees(
    no_poll: Settings, start_worker: StartWorker, sim: Sim
) -> None:
    """One slot, three jobs: the wakes for the second and third come while the worker is full
    (and are ignored then); each job's end makes it poll."""
    sim.script({"delay_s": 0.3})
    one_slot = no_poll.model_copy(update={"max_jobs": 1, "scheduler": False})
    await start_worker(one_slot)
    async with Client(connect(one_slot.redis_url), one_slot) as client:
        jobs = [await client.submit(BODY) for _ in range(3)]
        records = [await client.wait(job.id, timeout=LONG_POLL_S / 4) for job in jobs]
    assert {record.status for record in records} == {JobStatus.SUCCEEDED}


async def test_a_worker_polls_once_its_wake_subscription_is_confirmed(settings: Settings) -> None:
    """Work announced between a worker's first poll and its subscription would wait a whole
    poll delay (a producer's first submit came just then in `make test-partitions`): so the
    confirmation ends the idle, and that poll finds it. Without it this idle lasts a minute."""
    from worker.queue.wake import QueueWake

    async with connect(settings.redis_url) as redis:
        wake = QueueWake(redis, settings.keys, lambda: True)
        try:
            wake.before_poll()  # starts listening
            await asyncio.wait_for(wake.idle(LONG_POLL_S), timeout=LONG_POLL_S / 4)
        finally:
            await wake.aclose()
