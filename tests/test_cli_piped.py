"""The CLI outside a terminal (stdout piped, as in a script or CI): complete lines, never a
table squeezed to 80 columns nor a Python dict, and valid JSON wherever --json is given."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from msgq.client import Client
from msgq.dev.stack import msgq_command
from msgq.settings import Settings
from tests.conftest import Sim, StartWorker, worker_env
from tests.test_captions import PROMPT, save
from tests.test_crash import BODY


def run(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": settings.redis_url, "COLUMNS": "80"}
    return subprocess.run(msgq_command(*args), env=env, capture_output=True, text=True, timeout=120)


def photos(folder: Path) -> Path:
    folder.mkdir()
    save(folder / "a.png")
    save(folder / "b.png", colour=(0, 90, 0))
    save(folder / "c.jpg", size=(300, 200))
    return folder


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line one whole JSON object (a partial or a non-JSON line fails the test)."""
    return [json.loads(line) for line in text.splitlines()]


async def test_caption_summary_is_one_line_or_json_when_piped(
    settings: Settings, tmp_path: Path, sim: Sim, start_worker: StartWorker
) -> None:
    """Piped, the summary is one complete line (every column, not wrapped at 80), the progress
    lines on stderr are whole; with --json the summary is a JSON object and progress JSON Lines.
    While jobs are in flight the progress says so, instead of a bare '0/3 ok 0'."""
    folder = photos(tmp_path / "photos")
    await start_worker()
    args = ("caption", str(folder), "--prompt", PROMPT)
    plain = await asyncio.to_thread(run, settings, *args, "--out", str(tmp_path / "p.jsonl"))
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("msgq caption: succeeded 3, failed 0,")
    assert "wall time" in lines[0] and "│" not in plain.stdout
    progress = [line for line in plain.stderr.splitlines() if line.startswith("captions ")]
    assert progress and all(" eta " in line for line in progress)
    assert any("/3: in flight " in line and " ok 0 " in line for line in progress)

    as_json = await asyncio.to_thread(
        run, settings, *args, "--out", str(tmp_path / "j.jsonl"), "--json"
    )
    assert as_json.returncode == 0, as_json.stderr
    summary = json.loads(as_json.stdout)
    assert summary["event"] == "summary" and (summary["succeeded"], summary["failed"]) == (3, 0)
    events = json_lines(as_json.stderr)
    assert events and {e["event"] for e in events} == {"progress"}
    assert events[-1]["succeeded"] == 3 and events[-1]["total"] == 3


async def test_dry_run_prints_lines_or_json_never_a_python_dict(
    settings: Settings, tmp_path: Path
) -> None:
    """The dry run's counts by format read `PNG 2, JPEG 1`; with --json it is one object."""
    folder = photos(tmp_path / "photos")
    args = ("caption", str(folder), "--prompt", PROMPT, "--dry-run")
    plain = await asyncio.to_thread(run, settings, *args)
    assert plain.returncode == 0, plain.stderr
    formats = [line for line in plain.stdout.splitlines() if line.strip().startswith("formats:")]
    assert formats == [f"{'formats':>18}: PNG 2, JPEG 1"]
    assert "{" not in plain.stdout and "'" not in plain.stdout
    as_json = await asyncio.to_thread(run, settings, *args, "--json")
    assert as_json.returncode == 0, as_json.stderr
    guess = json.loads(as_json.stdout)
    assert guess["images"] == 3 and guess["formats"] == {"PNG": 2, "JPEG": 1}


async def test_status_follow_says_why_a_queued_job_waits(
    settings: Settings, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """`status --follow` on a job nobody runs yet says at once that it is queued and why, on a
    line of its own; --json gives the same as JSON Lines and ends with the record."""
    job = await client.submit(BODY)
    env = worker_env(settings)

    async def follow(*extra: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *msgq_command("status", job.id, "--follow", *extra),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    plain, as_json = await follow(), await follow("--json")
    assert plain.stderr is not None and as_json.stdout is not None
    said = (await asyncio.wait_for(plain.stderr.readline(), 20)).decode()
    assert said.startswith(f"msgq: job {job.id} is queued, waiting for no worker: ")
    assert said.endswith("\n")
    first = json.loads(await asyncio.wait_for(as_json.stdout.readline(), 20))
    assert first["event"] == "status" and first["status"] == "queued"
    assert first["waiting"] == "no worker" and first["why"]

    await start_worker()
    out, err = await asyncio.wait_for(plain.communicate(), 30)
    assert plain.returncode == 0, err.decode()
    text, _, record = out.decode().partition("{")
    assert json.loads("{" + record)["status"] == "succeeded" and text.endswith("\n")
    rest, err = await asyncio.wait_for(as_json.communicate(), 30)
    assert as_json.returncode == 0, err.decode()
    events = [first, *json_lines(rest.decode())]
    assert events[-1]["event"] == "record" and events[-1]["record"]["status"] == "succeeded"
    assert {e["event"] for e in events} <= {"status", "attempt", "text", "record"}
