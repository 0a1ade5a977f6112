"""Processes and measurements the benchmarks share: Redis, simulators, workers, job waves."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
from redis.asyncio import Redis

from msgq.client import Client
from msgq.dev.embedded_redis import EmbeddedRedis
from msgq.dev.stack import msgq_command, simulator_on_free_port
from msgq.keys import keyspace
from msgq.settings import Settings

KEY = "sk-ant-bench-local-key-000000"
PROMPT = "Summarise the following note in one line. " + "The queue hums along. " * 70


def text_request(max_tokens: int = 60) -> dict[str, Any]:
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": PROMPT}],
    }


@contextmanager
def redis_server(tmp: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp / "redis", appendonly=True)  # as deployed: AOF, everysec
    server.start()
    try:
        yield server
    finally:
        server.stop()


simulator = simulator_on_free_port  # the benchmarks' own simulators, with their flags


@contextmanager
def workers(
    count: int, redis_url: str, sim_url: str, **env: str
) -> Iterator[list[subprocess.Popen[bytes]]]:
    environment = {
        **os.environ,
        "REDIS_URL": redis_url,
        "ANTHROPIC_BASE_URL": sim_url,
        "ANTHROPIC_API_KEY": KEY,
        "MSGQ_LOG_LEVEL": "warning",
        **env,
    }
    procs = [
        subprocess.Popen(
            msgq_command("worker"),
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    try:
        time.sleep(1.0)  # let them connect before the clock starts (start-up is not throughput)
        yield procs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)


def process_cpu_s(pid: int) -> float:
    """A process's user + system CPU seconds so far (/proc, clock ticks of 1/100 s)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def peak_rss_kib(pid: int) -> int:
    """A process's peak resident set (VmHWM), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def sim_stats(url: str) -> dict[str, Any]:
    return dict(httpx.get(f"{url}/_sim/stats").json())


async def run_wave(redis_url: str, requests: list[dict[str, Any]]) -> tuple[float, dict[str, int]]:
    """Submit every request, wait until each job is terminal; seconds taken and final statuses."""
    async with Redis.from_url(redis_url) as redis, redis.pubsub() as pubsub:
        await pubsub.subscribe(keyspace().done_channel)
        client = Client(redis, Settings(_env_file=None, redis_url=redis_url))
        started = time.perf_counter()
        ids: list[str] = []
        for chunk in range(0, len(requests), 200):
            jobs = await asyncio.gather(*(client.submit(r) for r in requests[chunk : chunk + 200]))
            ids += [j.id for j in jobs]
        pending = set(ids)
        deadline = time.monotonic() + 900
        while pending and time.monotonic() < deadline:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
            if message is not None:
                pending.discard(message["data"].decode())
        elapsed = time.perf_counter() - started
        statuses: dict[str, int] = {}
        for start in range(0, len(ids), 1000):
            for raw in await redis.mget([f"msgq:job:{i}" for i in ids[start : start + 1000]]):
                status = orjson.loads(raw)["status"] if raw else "missing"
                statuses[status] = statuses.get(status, 0) + 1
        return elapsed, statuses


def caption_request() -> dict[str, Any]:
    """A caption job as `msgq caption` makes it: a photo-sized JPEG, base64."""
    import base64
    import io
    import random

    from PIL import Image

    rng = random.Random(7)
    img = Image.new("RGB", (1568, 1045))
    img.putdata([(rng.randrange(256), rng.randrange(256), 128) for _ in range(1568 * 1045)])
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    data = base64.b64encode(buf.getvalue()).decode()
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 200,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/jpeg", "data": data},
                    },
                    {"type": "text", "text": "Describe this image in one sentence."},
                ],
            }
        ],
    }
