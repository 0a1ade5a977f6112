"""Issue 10's proof: one run mixing every fault, ending with a clean `msgq audit`.

SIGKILLs of a worker, cancels racing completions, a spend-limit pause, a Redis restart and a
slow upstream with a small job timeout, all in one run. `make test` runs 300 jobs; `make chaos`
(MSGQ_CHAOS=1) runs 2,000 and prints the figures RELIABILITY.md reports.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from msgq.audit import audit
from msgq.client import Client
from msgq.connections import connect
from msgq.dev.embedded_redis import EmbeddedRedis, free_port
from msgq.dev.stack import msgq_command, wait_http
from msgq.settings import Settings
from schemas import JobStatus
from tests.conftest import KEYS, eventually, stop_process, stop_workers, worker_env

CHAOS = os.environ.get("MSGQ_CHAOS") == "1"
BODY = {
    "model": "claude-haiku-4-5",
    "max_tokens": 20,
    "messages": [{"role": "user", "content": "survive everything"}],
}
TERMINAL = {s.value for s in JobStatus if s.terminal}


@pytest.fixture
def faulty_simulator() -> Iterator[str]:
    """50 ms answers, 5% 529s, 2% hangs (the job timeout below turns those into retries)."""
    port = free_port()
    process = subprocess.Popen(
        msgq_command(
            "simulator",
            "--port",
            str(port),
            "--latency-ms",
            "50",
            "--fault",
            "529=0.05",
            "--hang-rate",
            "0.02",
        ),
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/_sim/stats", process=process)
    yield url
    stop_process(process)


def spawn(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    env = worker_env(
        settings,
        MSGQ_MAX_JOBS="8",
        MSGQ_JOB_TIMEOUT_S="1",
        MSGQ_SPEND_PAUSE_S="2",
        MSGQ_PAUSE_RECHECK_S="0.5",
        MSGQ_RECONCILE_INTERVAL_S="1",
        MSGQ_MAX_ATTEMPTS="20",
        MSGQ_BACKOFF_MAX_S="2",
        MSGQ_SHUTDOWN_GRACE_S="10",
    )
    return subprocess.Popen(msgq_command("worker"), env=env, stdout=out, stderr=out)


async def counts(redis: Redis, ids: list[str]) -> Counter[str]:
    raws = await redis.mget([KEYS.record_key(i) for i in ids])
    return Counter(json.loads(r)["status"] if r else "missing" for r in raws)


def reconciler_actions(*logs: Path) -> Counter[str]:
    acted: Counter[str] = Counter()
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                event = json.loads(line).get("event", "")
                if event in ("reconciler.lost", "reconciler.requeued"):
                    acted[event] += 1
    return acted


async def test_mixed_faults_end_every_job_and_audit_clean(
    settings: Settings, faulty_simulator: str, tmp_path: Path
) -> None:
    n, kills, cancels = (2000, 4, 100) if CHAOS else (300, 2, 20)
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True)
    server.start()
    custom = settings.model_copy(
        update={"redis_url": server.url, "anthropic_base_url": faulty_simulator}
    )
    logs = [tmp_path / "steady.log", tmp_path / "victim.log"]
    steady, victim = spawn(custom, logs[0]), spawn(custom, logs[1])
    rng = random.Random(7)
    try:
        async with (
            Client(connect(server.url), custom) as client,
            connect(server.url) as redis,
        ):
            ids = [(await client.submit(BODY)).id for _ in range(n)]

            async def progressed(target: int) -> bool:
                done = await counts(redis, ids)
                return sum(done[s] for s in TERMINAL) >= target

            for k in range(kills):
                await eventually(lambda k=k: progressed(n * (k + 1) // (kills + 3)), timeout_s=90)
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                victim = spawn(custom, logs[1])
            # Cancels racing completions: some are queued, some mid-call, some just ended.
            canceled = rng.sample(ids, cancels)
            await asyncio.gather(*(client.cancel(i) for i in canceled))
            # The organisation's spend limit: the fleet pauses (2 s), jobs stay queued.
            async with httpx.AsyncClient() as http:
                spend = {
                    "status": 429,
                    "error_type": "rate_limit_error",
                    "error_code": "enforced_spend_limit_reached",
                    "message": "spend limit reached",
                }
                await http.post(f"{faulty_simulator}/_sim/script", json={"responses": [spend]})
            # Redis restarts (AOF flushed on SIGTERM); workers and producer reconnect.
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(1.0)  # an outage the fleet must ride out, not a sync point
            await asyncio.to_thread(server.start)

            async def all_ended() -> bool:
                done = await counts(redis, ids)
                return sum(done[s] for s in TERMINAL) == n

            await eventually(all_ended, timeout_s=240 if CHAOS else 120)
            final = await counts(redis, ids)
            report = await audit(redis, KEYS)
    finally:
        codes = stop_workers(steady, victim)
        server.stop()
    assert report.clean, report.as_dict()
    assert final["succeeded"] + final["canceled"] == n, final  # nothing failed, lost or stuck
    assert final["canceled"] <= cancels
    acted = reconciler_actions(*logs)
    assert acted == Counter(), acted  # the reconciler found no orphan: none were made
    assert codes[0] == 0 and codes[1] in (0, -signal.SIGTERM)
    print(
        f"\nmixed chaos: {n} jobs, {kills} SIGKILLs, {cancels} cancels ({final['canceled']} took), "
        f"spend pause, Redis restart, 5% 529 + 2% hangs at a 1 s job timeout: {dict(final)}; "
        f"reconciler actions {sum(acted.values())}; audit clean"
    )
