"""A paid-for answer that arrives while Redis is away is held and stored when Redis returns
(issue 31, "nothing paid twice"): the job is not sent again, and the log says it was held."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from redis.asyncio import Redis

from msgq.audit import audit
from msgq.client import Client
from msgq.dev.embedded_redis import EmbeddedRedis
from msgq.settings import Settings
from schemas import JobStatus
from tests.conftest import Sim, eventually, stop_workers
from tests.test_reliability import BODY, events, spawn

# Past the ~15 s that `finish_durably` retried before (then the answer was thrown away and the
# job sent again), inside the hold the workers run with here.
OUTAGE_S = 18.0


async def test_an_answer_held_through_a_redis_outage_is_stored_once(
    settings: Settings, sim: Sim, tmp_path: Path
) -> None:
    """Redis stops while the simulator is answering and comes back 18 s after the answer: it is
    stored, the job succeeds on its one call, and a second worker (idle, riding out the same
    outage, the job's lock lapsed meanwhile) does not send it again."""
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True)
    server.start()
    custom = settings.model_copy(update={"redis_url": server.url})
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    workers = [spawn(custom, log, MSGQ_ANSWER_HOLD_S="40") for log in logs]
    sim.script({"delay_s": 3})  # the call is in flight when Redis stops
    try:
        async with Client(Redis.from_url(server.url), custom) as client:
            job = await client.submit(BODY)

            async def in_flight() -> bool:
                return sim.received == 1

            await eventually(in_flight)
            await asyncio.to_thread(server.stop)

            async def held() -> bool:
                return any(e.get("event") == "job.answer_held" for e in events(*logs))

            await eventually(held)
            await asyncio.sleep(OUTAGE_S)  # the outage itself, from the answer on
            await asyncio.to_thread(server.start)
            back_at = datetime.now(UTC)
            record = await client.wait(job.id, timeout=30)
            async with Redis.from_url(server.url) as redis:
                assert (await audit(redis)).clean
    finally:
        codes = stop_workers(*workers)
        server.stop()
    assert codes == [0, 0]
    assert record.status is JobStatus.SUCCEEDED
    assert (record.attempts, record.attempt_errors) == (1, [])
    assert sim.received == 1  # paid once
    seen = events(*logs)
    names = [e.get("event") for e in seen]
    assert names.count("job.answer_held") == 1 and names.count("job.answer_stored") == 1
    assert "job.answer_given_up" not in names
    [stored] = [e for e in seen if e.get("event") == "job.answer_stored"]
    assert stored["held_s"] >= OUTAGE_S
    after_s = (datetime.fromisoformat(stored["timestamp"]) - back_at).total_seconds()
    held = f"held {stored['held_s']} s in {stored['tries']} tries"
    print(f"\n{held}, stored {after_s:.2f} s after Redis was back")
    assert [e["status"] for e in seen if e.get("event") == "job.finished"] == ["succeeded"]


async def test_an_answer_given_up_is_noted_at_the_next_attempt(
    settings: Settings, sim: Sim, tmp_path: Path
) -> None:
    """Redis stays away past the hold (1 s here): the answer is given up (logged), and when
    the job runs again the timeline says why its first, billed, call left no answer."""
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True)
    server.start()
    custom = settings.model_copy(update={"redis_url": server.url})
    log = tmp_path / "w.log"
    worker = spawn(custom, log, MSGQ_ANSWER_HOLD_S="1")
    sim.script({"delay_s": 3})
    try:
        async with Client(Redis.from_url(server.url), custom) as client:
            job = await client.submit(BODY)

            async def in_flight() -> bool:
                return sim.received == 1

            await eventually(in_flight)
            await asyncio.to_thread(server.stop)

            async def given_up() -> bool:
                return any(e.get("event") == "job.answer_given_up" for e in events(log))

            await eventually(given_up)
            await asyncio.to_thread(server.start)
            record = await client.wait(job.id, timeout=30)
    finally:
        codes = stop_workers(worker)
        server.stop()
    assert codes == [0]
    assert (record.status, record.attempts, sim.received) == (JobStatus.SUCCEEDED, 2, 2)
    [lost] = record.attempt_errors
    assert (lost.attempt, lost.type) == (1, "lost")
    assert lost.message.startswith("the answer could not be stored: Redis unreachable")
    assert lost.request_id is not None and lost.request_id.startswith("req_")
    names = [e.get("event") for e in events(log)]
    assert names.count("job.answer_held") == 1 and names.count("job.answer_given_up") == 1
