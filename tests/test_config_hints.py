"""Misconfiguration says what is wrong and where it came from (issue 34, items 2 and 3)."""

from __future__ import annotations

from pathlib import Path

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
