"""A paid-for answer that arrives while Redis is away is held and stored when Redis returns
(issue 31, "nothing paid twice"): the job is not sent again, and the log says it was held."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from msgq.audit import audit
from msgq.client import Client
from msgq.connections import connect
from msgq.dev.embedded_redis import EmbeddedRedis, free_port
from msgq.settings import Settings
from schemas import JobStatus
from tests.conftest import KEYS, Sim, eventually, stop_workers
from tests.test_reliability import BODY, events, spawn
from worker.hold import AnswerHold

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

        async def both_started() -> bool:  # a worker still starting when Redis stops comes up
            # after the outage with none to ride out, and claims the lapsed job at once
            started = [e for e in events(*logs) if e.get("event") == "worker.started"]
            return len(started) == 2

        await eventually(both_started)
        async with Client(connect(server.url), custom) as client:
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
            async with connect(server.url) as redis:
                assert (await audit(redis, KEYS)).clean
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
        async with Client(connect(server.url), custom) as client:
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


async def test_a_call_in_flight_through_an_outage_is_not_sent_again(
    settings: Settings, sim: Sim, tmp_path: Path
) -> None:
    """Redis stops mid-call for 5 s, past the 2 s lock, and is back before the answer (12 s):
    the worker running the job takes its lock back, and the other worker, idle through the
    same outage, waits before claiming, so the job is not claimed and sent again meanwhile."""
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True)
    server.start()
    custom = settings.model_copy(update={"redis_url": server.url})
    logs = [tmp_path / "w1.log", tmp_path / "w2.log"]
    workers = [spawn(custom, log) for log in logs]
    sim.script({"delay_s": 12})
    try:
        async with Client(connect(server.url), custom) as client:
            job = await client.submit(BODY)

            async def in_flight() -> bool:
                return sim.received == 1

            await eventually(in_flight)
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(5.0)  # the outage itself: the job's lock lapses in it
            await asyncio.to_thread(server.start)
            record = await client.wait(job.id, timeout=30)
    finally:
        codes = stop_workers(*workers)
        server.stop()
    assert codes == [0, 0]
    assert (record.status, record.attempts, record.attempt_errors) == (JobStatus.SUCCEEDED, 1, [])
    assert sim.received == 1
    reconnected = [e for e in events(*logs) if e.get("event") == "worker.redis_reconnected"]
    assert reconnected and all(e["settle_s"] > 0 for e in reconnected)


async def test_the_hold_is_bounded_in_memory_and_in_time() -> None:
    """Against a Redis that is not there: an answer past the byte budget is given up at once;
    one within it is retried for `hold_s`, then given up; each leaves its note for the next
    attempt, and nothing stays counted as held."""
    answer = {"content": [{"type": "text", "text": "x" * 100}]}
    async with Redis(port=free_port(), socket_connect_timeout=1) as gone:

        async def write() -> object:
            return await gone.set("never", "stored")

        small = AnswerHold(hold_s=5.0, max_bytes=50)
        started = asyncio.get_running_loop().time()
        with pytest.raises(RedisError):
            await small.store(write, answer, job_id="big", request_id="req_big")
        assert asyncio.get_running_loop().time() - started < 1.0  # not held at all
        note = small.unstored("big")
        assert note is not None and "MSGQ_ANSWER_HOLD_MAX_BYTES" in note.message
        assert (note.type, note.request_id) == ("lost", "req_big")
        brief = AnswerHold(hold_s=0.5, max_bytes=10_000)
        with pytest.raises(RedisError):
            await brief.store(write, answer, job_id="j", request_id=None)
        assert asyncio.get_running_loop().time() - started >= 0.5
        assert (brief.held, brief.held_bytes) == (0, 0)
        note = brief.unstored("j")
        assert note is not None and "held for MSGQ_ANSWER_HOLD_S, 0.5 s" in note.message
        assert brief.unstored("j") is None  # once
