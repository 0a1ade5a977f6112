"""SIGKILL the worker that runs the batch lane at each crash point: every job still ends,
succeeded, and no job is sent in two upstream batches (RELIABILITY.md, "The batch lane")."""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from msgq.audit import audit
from msgq.client import Client
from msgq.connections import connect
from msgq.dev.stack import msgq_command
from msgq.settings import Settings
from schemas import JobStatus, Lane
from tests.conftest import KEYS, SAMPLES, Sim, eventually, stop_workers, worker_env

TEXT = json.loads((SAMPLES / "requests" / "text.json").read_text())
JOBS = 20
LANE_ENV = {
    "MSGQ_BATCH_MAX_WAIT_S": "0.3",
    "MSGQ_BATCH_POLL_S": "0.2",
    "MSGQ_BATCH_POLL_MAX_S": "0.5",
    "MSGQ_BATCH_CREATE_TIMEOUT_S": "3",
}


def spawn(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    env = worker_env(settings, **LANE_ENV)
    return subprocess.Popen(msgq_command("worker"), env=env, stdout=out, stderr=out)


def batches(sim: Sim) -> list[dict[str, Any]]:
    return list(sim.http.get("/_sim/batches").json()["data"])


def set_up(sim: Sim, point: str) -> None:
    """Hold the lane at `point`: the worker is killed there."""
    config = {"processing_s": 4.0 if point == "polling" else 0.3}
    sim.http.post("/_sim/batch-config", json=config).raise_for_status()
    if point == "before_create":  # the create is held, then dropped: never created
        sim.script({"delay_s": 30, "drop": True}, key="batches:create")
    elif point == "after_create":  # created at once, the answer held: the ID is never recorded
        sim.script({"delay_s": 30}, key="batches:create")
    elif point == "reading":  # half the results file, then silence
        sim.script({"stream_stall_s": 30}, key="batches:results")


async def reached(sim: Sim, client: Client, ids: list[str], point: str) -> bool:
    calls = sim.stats()["batches"]["calls"]
    if point == "before_create":
        return calls.get("create", 0) >= 1
    if point == "after_create":
        return len(batches(sim)) == 1
    if point == "polling":
        records = [await client.get(i) for i in ids]
        return all(r.upstream_batch_id for r in records) and calls.get("retrieve", 0) >= 1
    return calls.get("results", 0) >= 1


@pytest.mark.parametrize("point", ["before_create", "after_create", "polling", "reading"])
async def test_sigkill_at_each_crash_point_loses_and_repeats_nothing(
    point: str, settings: Settings, client: Client, sim: Sim, tmp_path: Path
) -> None:
    """20 pooled jobs; the lane's worker is SIGKILLed at `point`; a second worker finishes:
    all succeeded by the batch lane, no /v1/messages call, each job in one upstream batch."""
    set_up(sim, point)
    jobs = [(await client.submit(TEXT, lane="batch")).id for _ in range(JOBS)]
    first = spawn(settings, tmp_path / "a.log")
    try:

        async def at_point() -> bool:
            return await reached(sim, client, jobs, point)

        await eventually(at_point, timeout_s=30)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    second = spawn(settings, tmp_path / "b.log")
    try:
        records = [await client.wait(i, timeout=60) for i in jobs]
    finally:
        codes = stop_workers(second)
    assert codes == [0]
    assert {r.status for r in records} == {JobStatus.SUCCEEDED}
    assert {r.served_by for r in records} == {Lane.BATCH}
    assert sim.received == 0
    sent = Counter(cid.rsplit("-", 1)[0] for b in batches(sim) for cid in b["custom_ids"])
    assert len(sent) == JOBS and set(sent.values()) == {1}, sent
    assert len(batches(sim)) == 1  # adopted, never re-created; or never created the first time
    async with connect(settings.redis_url) as redis:
        report = await audit(redis, KEYS)
    assert report.clean, report.as_dict()
