"""`msgq dev`: one command starts Redis, simulator and worker; Ctrl-C stops them all."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import orjson
import pytest
import redis

from msgq.client import Client
from msgq.dev.stack import msgq_command
from schemas import JobStatus
from tests.conftest import SAMPLES


async def test_dev_runs_a_job_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    """Without a key the simulator answers; SIGINT stops every process it started."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "REDIS_"))}
    proc = await asyncio.create_subprocess_exec(
        *msgq_command("dev", "--data-dir", str(tmp_path / "msgq")),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(30):
        while not lines or "Ctrl-C" not in lines[-1]:
            lines.append((await proc.stdout.readline()).decode())
    text = "".join(lines)
    assert "simulator" in text and "ANTHROPIC_API_KEY is not set" in text
    match = re.search(r"REDIS_URL=(\S+)", text)
    assert match is not None
    url = match[1]
    assert (tmp_path / "msgq" / "redis" / "appendonlydir").is_dir()

    async with Client.from_url(url) as client:
        job = await client.submit(orjson.loads((SAMPLES / "requests" / "text.json").read_bytes()))
        assert (await client.wait(job.id, timeout=30)).status is JobStatus.SUCCEEDED

    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(30):
        assert await proc.wait() == 0
    probe = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    with pytest.raises(redis.ConnectionError):
        probe.ping()  # the embedded Redis is gone too
    probe.close()


def test_demo_finds_its_samples() -> None:
    """`make demo` reads the bundled requests and images from the checkout."""
    from msgq.dev.demo import SAMPLES, sample_requests

    assert set(sample_requests()) >= {"text", "prefill"}
    assert any((SAMPLES / "images").iterdir())
