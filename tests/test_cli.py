"""The `msgq` command as a user runs it: a subprocess, exit codes, one-line errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from redis.asyncio import Redis

from msgq.client import Client
from msgq.dev.embedded_redis import free_port
from msgq.dev.stack import msgq_command
from msgq.liveness import live_workers
from msgq.settings import Settings
from tests.conftest import KEYS, SAMPLES, Sim, StartWorker, eventually
from tests.test_crash import BODY


def msgq(
    settings: Settings,
    *args: str,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    environ = {"REDIS_URL": settings.redis_url, "PATH": "/usr/bin:/bin", **(env or {})}
    environ.setdefault("MSGQ_PARTITIONS", str(settings.partitions))
    return subprocess.run(
        msgq_command(*args),
        input=stdin,
        capture_output=True,
        text=True,
        env=environ,
        cwd=cwd,
        timeout=60,
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


async def test_failed_job_exits_1(
    settings: Settings, redis: Redis, sim: Sim, start_worker: StartWorker
) -> None:
    """A job that ends failed exits 1 with one line on stderr."""
    sim.script({"status": 400, "message": "nope"})
    await start_worker()

    async def worker_seen() -> bool:  # else the CLI rightly warns that no worker is running
        return await live_workers(redis, settings.keys) > 0

    await eventually(worker_seen)
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


def test_first_hour_mistakes_are_one_line_exit_2(settings: Settings, tmp_path: Path) -> None:
    """A photo given to submit, a typo'd field, an unknown job to retry, a missing caption
    folder, bad settings: each is exit 2 and one line that names the culprit."""
    photo = tmp_path / "some.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\xff\xfe")
    typo = {k: v for k, v in BODY.items() if k != "max_tokens"} | {"max_token": 5}
    cases = {
        "not JSON": msgq(settings, "submit", str(photo)),
        "max_tokens": msgq(settings, "submit", "-", stdin=json.dumps(typo)),
        "'nope'": msgq(settings, "retry", "nope"),
        "nosuchdir": msgq(settings, "caption", str(tmp_path / "nosuchdir"), "--dry-run"),
        "MSGQ_MAX_JOBS": msgq(settings, "status", "x", env={"MSGQ_MAX_JOBS": "abc"}),
        "REDIS_URL": msgq(settings, "status", "x", env={"REDIS_URL": "notaurl"}),
    }
    for needle, done in cases.items():
        assert done.returncode == 2, (needle, done.stderr)
        assert needle in done.stderr, done.stderr
        assert "internal error" not in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_settings_show_the_value_in_effect_and_its_source(
    settings: Settings, tmp_path: Path
) -> None:
    """`msgq settings`: environment, .env and default each named; secrets masked."""
    (tmp_path / ".env").write_text("MSGQ_LOG_LEVEL=debug\n")
    env = {"MSGQ_MAX_JOBS": "7", "ANTHROPIC_API_KEY": "sk-ant-hush-0123456789"}
    done = msgq(settings, "settings", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()}
    assert lines["MSGQ_MAX_JOBS"][:2] == ["7", "env"]
    assert lines["MSGQ_LOG_LEVEL"][:2] == ["debug", ".env"]
    assert lines["MSGQ_QUEUE_NAME"][:2] == ["msgq:queue", "default"]
    assert "hush" not in done.stdout and "sk-ant" not in done.stdout


async def test_conflicts_tenants_and_ended_cancels_are_visible(
    settings: Settings, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """A reused --id with another request exits 2; --tenant reads an HTTP job; cancelling a
    finished job exits 0 but says it had already ended."""
    first = await amsgq(settings, "submit", "-", "--id", "same", stdin=json.dumps(BODY))
    assert first.returncode == 0, first.stderr
    other = {**BODY, "max_tokens": 7}
    clash = await amsgq(settings, "submit", "-", "--id", "same", stdin=json.dumps(other))
    assert clash.returncode == 2 and "different request" in clash.stderr
    await client.submit(BODY, job_id="order-1", tenant="acme")
    await start_worker()
    await client.wait("acme:order-1", timeout=30)
    status = await amsgq(settings, "status", "order-1", "--tenant", "acme")
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "succeeded"
    cancel = await amsgq(settings, "cancel", "order-1", "--tenant", "acme")
    assert cancel.returncode == 0
    assert "had already ended (succeeded)" in cancel.stderr


async def test_worker_check_is_a_health_check(
    settings: Settings, redis: Redis, sim: Sim, start_worker: StartWorker
) -> None:
    """`msgq worker --check` exits 1 with no live worker (or no Redis), 0 once one runs and the
    API does not refuse its key (unreachable: a warning, still healthy)."""
    assert settings.anthropic_api_key is not None
    upstream = {
        "ANTHROPIC_API_KEY": settings.anthropic_api_key.get_secret_value(),
        "ANTHROPIC_BASE_URL": settings.anthropic_base_url,
    }
    assert (await amsgq(settings, "worker", "--check")).returncode == 1
    down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    assert (await amsgq(down, "worker", "--check")).returncode == 1
    await start_worker()

    async def reported() -> bool:
        return bool(await redis.exists(KEYS.health_check_key))

    await eventually(reported)
    healthy = await asyncio.to_thread(msgq, settings, "worker", "--check", env=upstream)
    assert healthy.returncode == 0, healthy.stderr
    # The API unreachable is its bad minute, not a wrong key: still healthy, and said.
    dead = {**upstream, "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{free_port()}"}
    unverified = await asyncio.to_thread(msgq, settings, "worker", "--check", env=dead)
    assert unverified.returncode == 0
    assert "ANTHROPIC_API_KEY not verified: cannot reach" in unverified.stderr
