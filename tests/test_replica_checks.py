"""MSGQ_SUBMIT_MIN_REPLICAS in the worker (issue 32's failover: no job sent twice). A claim is
sent once a replica holds it, and a paid-for answer counts as stored once the primary answering
after the write holds it terminal. Here, on one node with no replica, each check waits its
timeout, says so once, and lets the work go on; test_cluster_failover runs them through a real
failover."""

from __future__ import annotations

import pytest
import structlog
from redis.asyncio import Redis

from msgq.client import Client
from msgq.connections import connect
from msgq.jobs.store import JobStore
from msgq.replicas import replicas_and_terminal
from msgq.settings import Settings
from schemas import JobStatus
from tests.conftest import KEYS, Sim, StartWorker, eventually
from worker.hold import AnswerHold, NotOnPrimaryError, Replicas
from worker.transitions import _on_replicas

BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 20,
    "messages": [{"role": "user", "content": "hello"}],
}


async def test_a_record_not_terminal_on_the_primary_is_written_again(
    client: Client, store: JobStore, redis: Redis
) -> None:
    """What the worker sees after a failover lost its terminal write: the record on the new
    primary is still in progress. The check raises NotOnPrimaryError (a RedisError: the
    answer is held and the write sent again); a terminal record passes."""
    job = await client.submit(BODY)
    assert await replicas_and_terminal(redis, KEYS, job.id, replicas=1, timeout_ms=50) == (0, False)
    with pytest.raises(NotOnPrimaryError):
        await _on_replicas(store, job.id, AnswerHold(60, 2**20, Replicas(1, 50)))
    await client.cancel(job.id)  # terminal
    assert await replicas_and_terminal(redis, KEYS, job.id, replicas=1, timeout_ms=50) == (0, True)
    with structlog.testing.capture_logs() as logs:
        await _on_replicas(store, job.id, AnswerHold(60, 2**20, Replicas(1, 50)))
    assert [e["event"] for e in logs] == ["job.answer_not_replicated"]


async def test_without_a_replica_jobs_still_run_and_the_worker_says_so_once(
    settings: Settings, sim: Sim, start_worker: StartWorker
) -> None:
    plain = settings.model_copy(update={"scheduler": False})
    durable = plain.model_copy(update={"submit_min_replicas": 1, "submit_replica_timeout_ms": 50})
    with structlog.testing.capture_logs() as logs:
        await start_worker(durable)
        async with Client(connect(plain.redis_url), plain) as client:  # submits: no replica wait
            jobs = [await client.submit(BODY) for _ in range(3)]
            ended = [await client.wait(job.id, timeout=20) for job in jobs]

            async def all_answers_checked() -> bool:  # each after its write and a WAIT
                return sum(e["event"] == "job.answer_not_replicated" for e in logs) == 3

            await eventually(all_answers_checked)
    assert {record.status for record in ended} == {JobStatus.SUCCEEDED}
    assert sim.received == 3  # each sent once
    events = [e["event"] for e in logs]
    assert events.count("job.claim_not_replicated") == 1  # said once, not per claim
    assert events.count("job.answer_not_replicated") == 3
