"""The `msgq` command as a user runs it: a subprocess, exit codes, one-line errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from tests.conftest import SAMPLES, Sim, StartWorker
from tests.test_crash import BODY
from worker.dev.stack import msgq_command
from worker.settings import Settings


def msgq(
    settings: Settings, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {"REDIS_URL": settings.redis_url, "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        msgq_command(*args), input=stdin, capture_output=True, text=True, env=env, timeout=60
    )


async def amsgq(
    settings: Settings, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI from an async test: in a thread, so the in-process worker keeps running."""
    return await asyncio.to_thread(msgq, settings, *args, stdin=stdin)


async def test_submit_wait_status_result_jobs(
    settings: Settings, sim: Sim, start_worker: StartWorker
) -> None:
    """submit --wait prints the record; status, result and jobs read it back."""
    await start_worker()
    done = await amsgq(
        settings,
        "submit",
        str(SAMPLES / "requests" / "text.json"),
        "--id",
        "cli-1",
        "--wait",
        "--timeout",
        "30",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "succeeded"
    status = await amsgq(settings, "status", "cli-1")
    assert json.loads(status.stdout)["id"] == "cli-1"
    result = await amsgq(settings, "result", "cli-1")
    assert json.loads(result.stdout)["type"] == "message"
    listed = await amsgq(settings, "jobs", "--status", "succeeded")
    assert listed.stdout.startswith("cli-1  succeeded")


async def test_failed_job_exits_1(settings: Settings, sim: Sim, start_worker: StartWorker) -> None:
    """A job that ends failed exits 1 with one line on stderr."""
    sim.script({"status": 400, "message": "nope"})
    await start_worker()
    done = await amsgq(settings, "submit", "-", "--wait", stdin=json.dumps(BODY))
    assert done.returncode == 1
    assert done.stderr.strip().endswith("failed") and len(done.stderr.strip().splitlines()) == 1
    job_id = json.loads(done.stdout)["id"]
    result = await amsgq(settings, "result", job_id)
    assert result.returncode == 1 and "nope" in result.stderr


def test_usage_and_validation_errors_exit_2(settings: Settings, tmp_path: Path) -> None:
    """Bad JSON, an invalid request, an unknown job: exit 2, one line, no traceback."""
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{nope")
    prefill = {
        **BODY,
        "model": "claude-opus-4-7",
        "messages": [*BODY["messages"], {"role": "assistant", "content": "Sure"}],
    }
    cases = [
        msgq(settings, "submit", str(bad_json)),
        msgq(settings, "submit", "-", stdin=json.dumps(prefill)),
        msgq(settings, "status", "no-such-job"),
        msgq(settings, "frobnicate"),
    ]
    for done in cases:
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert "prefill" in cases[1].stderr


def test_unreachable_redis_is_one_line(settings: Settings) -> None:
    """Redis down: a one-line error naming the problem, not a traceback."""
    down = settings.model_copy(update={"redis_url": "redis://:hunter2hunter2@127.0.0.1:1/0"})
    done = msgq(down, "status", "x")
    assert done.returncode == 1
    assert "cannot reach Redis" in done.stderr and "hunter2" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
