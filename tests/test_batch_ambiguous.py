"""Issue 24 item 5: a batch create answered by a gateway's 408/502/504 may have created the
batch, so it is looked up and adopted like an unanswered one, never simply sent again (two
batches would run and bill)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from redis.asyncio import Redis

from msgq.audit import audit
from msgq.client import Client
from msgq.settings import Settings
from schemas import JobStatus
from tests.conftest import KEYS, SAMPLES, Sim, StartWorker

TEXT = json.loads((SAMPLES / "requests" / "text.json").read_text())
JOBS = 5


@pytest.mark.parametrize(
    ("answer", "creates"),
    [
        ({"status": 504, "create_first": True}, 1),  # created, then the gateway gave up
        ({"status": 502}, 2),  # not created: nothing to adopt, so sent again (once)
    ],
    ids=["504-after-create", "502-not-created"],
)
async def test_a_gateway_answer_to_a_create_is_adopted_or_sent_again_never_both(
    answer: dict[str, Any],
    creates: int,
    settings: Settings,
    client: Client,
    sim: Sim,
    start_worker: StartWorker,
    redis: Redis,
) -> None:
    """One upstream batch runs and bills either way: the 504's batch is adopted (one create
    call), the 502's absence is found by listing and the batch sent again (two calls)."""
    lane = settings.model_copy(
        update={
            "batch_max_wait_s": 0.3,
            "batch_poll_s": 0.2,
            "batch_poll_max_s": 0.5,
            "batch_create_timeout_s": 1.0,  # looked up 6 s after the send
        }
    )
    sim.http.post("/_sim/batch-config", json={"processing_s": 0.3}).raise_for_status()
    sim.script(answer, key="batches:create")
    jobs = [(await client.submit(TEXT, lane="batch")).id for _ in range(JOBS)]
    await start_worker(lane)
    done = [await client.wait(job_id, timeout=30) for job_id in jobs]
    assert {r.status for r in done} == {JobStatus.SUCCEEDED}
    assert {r.attempts for r in done} == {1}
    upstream = sim.http.get("/_sim/batches").json()["data"]
    stats = sim.stats()["batches"]
    assert len(upstream) == 1 and stats["requests"] == JOBS  # one batch ran and billed
    assert stats["calls"]["create"] == creates
    assert {r.upstream_batch_id for r in done} == {upstream[0]["id"]}
    assert sim.received == 0  # nothing fell back to /v1/messages
    assert (await audit(redis, KEYS)).clean
