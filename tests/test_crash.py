"""A worker killed mid-request: another worker completes the job, and the record ends once."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from msgq.audit import audit
from msgq.client import Client
from msgq.connections import connect
from msgq.dev.stack import msgq_command
from msgq.settings import Settings
from schemas import JobStatus
from tests.conftest import KEYS, Sim, eventually, stop_workers, worker_env

BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 20,
    "messages": [{"role": "user", "content": "survive a crash"}],
}


def spawn_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    return subprocess.Popen(
        msgq_command("worker"), env=worker_env(settings), stdout=out, stderr=out
    )


async def test_sigkill_mid_request_is_recovered_by_another_worker(
    settings: Settings, client: Client, sim: Sim, tmp_path: Path
) -> None:
    """SIGKILL during the call: within ~lock_s another worker re-runs and succeeds once."""
    sim.script({"delay_s": 60})  # the first call is held until the worker is dead
    first = spawn_worker(settings, tmp_path / "a.log")
    try:
        job = await client.submit(BODY)

        async def held() -> bool:
            return sim.received == 1

        await eventually(held)
        assert (await client.get(job.id)).status is JobStatus.IN_PROGRESS
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    second = spawn_worker(settings, tmp_path / "b.log")
    try:
        record = await client.wait(job.id, timeout=30)
    finally:
        codes = stop_workers(second)
    assert codes == [0]
    assert record.status is JobStatus.SUCCEEDED
    assert record.attempts == 2 and sim.received == 2
    # The first call (answered or not, maybe billed) is in the timeline, found at the rerun.
    assert [(e.attempt, e.type) for e in record.attempt_errors] == [(1, "lost")]
    assert "lost mid-call (found at the next attempt)" in record.attempt_errors[0].message
    async with connect(settings.redis_url) as redis:
        assert (await audit(redis, KEYS)).clean
    events = [
        json.loads(line)
        for line in (tmp_path / "b.log").read_text().splitlines()
        if line.startswith("{")
    ]
    finished = [e for e in events if e.get("event") == "job.finished"]
    assert [e["status"] for e in finished] == ["succeeded"]
