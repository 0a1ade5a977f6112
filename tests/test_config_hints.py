"""Misconfiguration says what is wrong and where it came from (issue 34, items 2 and 3)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from msgq.cli.common import redis_origin
from msgq.dev.embedded_redis import free_port
from msgq.dev.stack import msgq_command, simulator_on_free_port
from msgq.settings import Settings
from tests.test_cli import msgq


def test_misspelt_variables_are_named_with_the_closest_real_one(
    settings: Settings, tmp_path: Path
) -> None:
    """MSGQ_MAX_JOB and REDIS_ULR in the environment, MSGQ_QUEUE_NAM in .env: one warning each
    on stderr naming the real variable; real names and other programs' variables are quiet."""
    (tmp_path / ".env").write_text("MSGQ_QUEUE_NAM=x\n")
    env = {
        "MSGQ_MAX_JOB": "10",
        "REDIS_ULR": "redis://elsewhere:6379/0",
        "MSGQ_MAX_JOBS": "10",
        "MSGQ_SIM_SEED": "3",  # the simulator command's own option
        "REDIS_PORT": "6379",  # someone else's
    }
    done = msgq(settings, "jobs", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert warnings == [
        "msgq: warning: MSGQ_MAX_JOB (in the environment) is not a msgq setting and is "
        "ignored; did you mean MSGQ_MAX_JOBS?",
        "msgq: warning: REDIS_ULR (in the environment) is not a msgq setting and is "
        "ignored; did you mean REDIS_URL?",
        "msgq: warning: MSGQ_QUEUE_NAM (in .env) is not a msgq setting and is ignored; "
        "did you mean MSGQ_QUEUE_NAME?",
    ]


def test_unreachable_redis_names_the_url_where_it_came_from_and_what_to_check(
    settings: Settings, tmp_path: Path
) -> None:
    """From the environment (password masked), from .env, and from a stale `msgq dev` file:
    the one-line error says which URL, where it came from and what to check."""
    dead = f"127.0.0.1:{free_port()}"
    env = {"REDIS_URL": f"redis://:hunter2@{dead}/0"}
    done = msgq(settings, "jobs", env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert f"it used redis://***@{dead}/0, from REDIS_URL in the environment (check" in (
        done.stderr
    )
    assert "hunter2" not in done.stderr

    (tmp_path / ".env").write_text(f"MSGQ_REDIS_URL=redis://{dead}/0\n")
    done = plain_msgq("jobs", cwd=tmp_path)
    assert f"it used redis://{dead}/0, from MSGQ_REDIS_URL in .env" in done.stderr

    (tmp_path / ".env").unlink()
    (tmp_path / ".msgq").mkdir()
    (tmp_path / ".msgq" / "dev.env").write_text(f"REDIS_URL=redis://{dead}/0\n")
    done = plain_msgq("jobs", cwd=tmp_path)
    assert f"from {Path('.msgq') / 'dev.env'} (written by `msgq dev`" in done.stderr
    assert "is it still running?" in done.stderr


def test_the_default_redis_is_named_as_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """With REDIS_URL unset (and no .env, no msgq dev) the URL is called the default, and the
    hint says to start `msgq dev` or set REDIS_URL."""
    monkeypatch.chdir(Path(__file__).parent)  # no .env here
    origin = redis_origin(Settings(_env_file=None))
    assert origin.startswith("redis://localhost:6379/0, the default because REDIS_URL is unset")
    assert "start `msgq dev`" in origin


def test_a_worker_that_cannot_reach_redis_says_where_it_looked(
    settings: Settings, tmp_path: Path
) -> None:
    """`msgq worker` with a wrong URL logs one worker.redis_unreachable line naming the URL
    and its source before its per-second retries; `--check` says the same."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    env = {"PATH": "/usr/bin:/bin", "REDIS_URL": dead, "ANTHROPIC_API_KEY": "sk-ant-x"}
    process = subprocess.Popen(
        msgq_command("worker"), env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stderr is not None
        first = json.loads(process.stderr.readline())
    finally:
        process.kill()
        process.wait()
    assert first["event"] == "worker.redis_unreachable"
    assert first["redis"].startswith(f"{dead}, from REDIS_URL in the environment (check")
    check = msgq(settings, "worker", "--check", env={"REDIS_URL": dead}, cwd=tmp_path)
    assert check.returncode == 1
    assert f"it used {dead}, from REDIS_URL in the environment" in check.stderr


def plain_msgq(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI with REDIS_URL unset, as a newcomer runs it."""
    return subprocess.run(
        msgq_command(*args),
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        cwd=cwd,
        timeout=60,
    )


def test_worker_check_verifies_the_api_key_against_the_models_api(
    settings: Settings, tmp_path: Path
) -> None:
    """`ANTHROPIC_API_KEY=foo-... msgq worker --check` is unhealthy, saying the API answered 401
    (it printed `healthy`); the right key passes that step (then no worker is alive here)."""
    with simulator_on_free_port("--api-key", "sk-ant-the-right-one") as api:
        env = {"ANTHROPIC_BASE_URL": api}
        wrong = msgq(settings, "worker", "--check", env={**env, "ANTHROPIC_API_KEY": "foo-SECRET"})
        right = msgq(
            settings, "worker", "--check", env={**env, "ANTHROPIC_API_KEY": "sk-ant-the-right-one"}
        )
    assert wrong.returncode == 1
    assert f"unhealthy: {api} refused ANTHROPIC_API_KEY: 401 authentication_error" in wrong.stderr
    assert "SECRET" not in wrong.stderr  # the key itself is never echoed
    assert right.returncode == 1
    assert "no worker health check" in right.stdout and "refused" not in right.stderr


def test_settings_piped_prints_only_the_table(settings: Settings, tmp_path: Path) -> None:
    """`msgq settings | grep X`: nothing on stderr (the webhook-keys note showed up every
    time); the table is on stdout."""
    done = msgq(settings, "settings", cwd=tmp_path)
    assert done.returncode == 0
    assert done.stderr == ""
    assert "MSGQ_MAX_JOBS" in done.stdout
