"""Admission in the user's world (issue 21): seconds of latency, limits learned from headers.

Each figure has its baseline in the same run:
1. one worker at 3 s a call against an aiohttp loop at the same concurrency on the same
   simulator (non-streaming at 512 calls in flight; streaming at 256): jobs/s, the ratio, the
   worker's CPU per job and its peak RSS per call in flight;
2. a fleet of 4 workers against a 600 RPM simulator with nothing configured in msgq (the limit
   is learned from headers): utilisation against the ideal (drain the minute's bucket, then the
   rate) and the share of 429s;
3. fair share with learned limits: interactive jobs arriving behind a bulk backlog, their wait
   from submission to start (p50, p99).

`python -m bench.real_load` runs these alone; `make bench` runs them with the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis

from bench.baseline import raw_httpx_run
from bench.harness import (
    KEY,
    peak_rss_kib,
    process_cpu_s,
    redis_server,
    sim_stats,
    simulator,
    text_request,
    workers,
)
from msgq.client import Client
from msgq.connections import connect
from msgq.jobs.endings import Endings
from msgq.jobs.store import JobStore
from msgq.settings import Settings
from msgq.tenancy.scheduling import resume_fleet
from schemas import JobStatus

Table = Callable[[str, list[str], list[list[Any]]], None]
LATENCY_MS = 3000


async def aiohttp_run(
    base_url: str, requests: list[dict[str, Any]], *, concurrency: int, stream: bool
) -> float:
    """The baseline: one aiohttp session, a semaphore, every call read to its end."""
    import aiohttp

    gate = asyncio.Semaphore(concurrency)
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    headers["content-type"] = "application/json"
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(
        base_url, connector=connector, headers=headers, timeout=timeout
    ) as session:

        async def one(body: dict[str, Any]) -> None:
            async with gate, session.post("/v1/messages", data=orjson.dumps(body)) as resp:
                resp.raise_for_status()
                if stream:
                    async for _line in resp.content:
                        pass
                else:
                    await resp.read()

        started = time.perf_counter()
        await asyncio.gather(*(one({**b, "stream": stream} if stream else b) for b in requests))
        return time.perf_counter() - started


async def _submit_paused(redis_url: str, requests: list[dict[str, Any]], **kw: Any) -> list[str]:
    """Jobs queued while the fleet is paused, so the clock measures draining, not submitting."""
    settings = Settings(_env_file=None, redis_url=redis_url)  # a cluster URL too
    async with connect(settings.redis_url) as redis:
        await redis.set(settings.keys.pause_key, "bench: filling the queue")
        client = Client(redis, settings)
        ids: list[str] = []
        for chunk in range(0, len(requests), 500):
            batch = requests[chunk : chunk + 500]
            ids += [j.id for j in await asyncio.gather(*(client.submit(r, **kw) for r in batch))]
        return ids


async def _drain(redis_url: str, ids: list[str]) -> float:
    """Lift the pause and wait for every job to end: seconds from the lift."""
    settings = Settings(_env_file=None, redis_url=redis_url)
    async with connect(settings) as redis:
        # msgq's own listener: every partition's endings, a subscription per shard on a cluster
        endings = Endings(redis, JobStore.from_settings(redis, settings))
        ended = endings.listen()
        await endings.start()
        pending = set(ids)
        started = time.perf_counter()
        await resume_fleet(redis, settings.keys)  # as `msgq resume` does: the dispatcher wakes
        deadline = time.monotonic() + 1800
        try:
            while pending and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    pending.discard(await asyncio.wait_for(ended.get(), 5.0))
        finally:
            await endings.stop()
        return time.perf_counter() - started


# A top-tier organisation's limits, well above what one worker sends: the simulator answers
# with `anthropic-ratelimit-*` headers as the API always does, so msgq learns them.
TOP_TIER = ["--rpm", "40000", "--itpm", "40000000", "--otpm", "8000000"]


async def one_worker(tmp: Path, *, concurrency: int, n: int, stream: bool, warm: bool) -> list[Any]:
    """`warm`: a running fleet (limits learned in the last 10 minutes); else a cold start, which
    pays the slow start's first round trips."""
    tokens = 150 if stream else 60
    flags = [*TOP_TIER, "--latency-ms", str(LATENCY_MS)]
    if stream:  # 150 tokens at 100 tokens/s after the first byte's latency
        flags += ["--ms-per-token", "10", "--output-tokens", str(tokens)]
    requests = [
        {**text_request(tokens), "messages": [{"role": "user", "content": f"call {i}"}]}
        for i in range(n)
    ]
    env = {"MSGQ_MAX_JOBS": str(concurrency), "MSGQ_UVLOOP": "true"}
    if not stream:
        env["MSGQ_STREAM_MIN_MAX_TOKENS"] = str(10**9)  # plain calls, as the baseline makes
    if stream:
        env["MSGQ_STREAM_MIN_MAX_TOKENS"] = "0"  # every job streams, as the baseline does
    with simulator(*flags) as sim:
        base_s = await aiohttp_run(sim, requests, concurrency=concurrency, stream=stream)
        with (
            redis_server(tmp / f"one-{stream}-{warm}") as server,
            workers(1, server.url, sim, **env) as procs,
        ):
            if warm:  # a few jobs first: the fleet has heard the API's limit headers
                await _drain(server.url, await _submit_paused(server.url, requests[:8]))
            ids = await _submit_paused(server.url, requests)
            pid = procs[0].pid
            cpu0 = process_cpu_s(pid)
            msgq_s = await _drain(server.url, ids)
            cpu_ms = (process_cpu_s(pid) - cpu0) * 1000 / n
            rss = peak_rss_kib(pid)
    ideal = n * LATENCY_MS / 1000 / concurrency
    return [
        ("stream" if stream else "plain") + (", warm" if warm else ", cold start"),
        concurrency,
        n,
        round(n / base_s, 1),
        round(n / msgq_s, 1),
        f"{base_s / msgq_s:.2f}",
        round(n / ideal, 1),
        f"{cpu_ms:.2f}",
        f"{rss / concurrency:.0f} KiB",
    ]


async def transport(n: int = 3000, concurrency: int = 512) -> list[list[Any]]:
    """The upstream client's cost per call as calls in flight grow: one aiohttp session, one
    httpx client, and httpx spread over small clients as msgq's worker did before it moved
    to one aiohttp session (`UpstreamClients`, two calls a client). Same simulator, same calls;
    process CPU per call beside the rate."""
    requests = [
        {**text_request(60), "messages": [{"role": "user", "content": f"call {i}"}]}
        for i in range(n)
    ]
    rows: list[list[Any]] = []
    with simulator("--latency-ms", str(LATENCY_MS)) as sim:
        runs: list[tuple[str, Callable[[], Any]]] = [
            (
                "aiohttp, 1 session",
                lambda: aiohttp_run(sim, requests, concurrency=concurrency, stream=False),
            ),
            ("httpx, 1 client", lambda: raw_httpx_run(sim, KEY, requests, concurrency=concurrency)),
            (
                f"httpx, {concurrency // 2} clients (msgq's spread)",
                lambda: raw_httpx_run(
                    sim, KEY, requests, concurrency=concurrency, clients=concurrency // 2
                ),
            ),
        ]
        for name, run in runs:
            cpu0 = time.process_time()
            seconds = await run()
            cpu_ms = (time.process_time() - cpu0) * 1000 / n
            rows.append([name, concurrency, round(n / seconds, 1), f"{cpu_ms:.2f}"])
    return rows


async def fleet_learned(tmp: Path, n: int = 5000, rpm: int = 600) -> list[Any]:
    """4 workers, nothing configured in msgq: the limit is learned from headers."""
    flags = ["--rpm", str(rpm), "--latency-ms", "1500", "--ms-per-token", "5"]
    requests = [
        {**text_request(60), "messages": [{"role": "user", "content": f"job {i}"}]}
        for i in range(n)
    ]
    with (
        simulator(*flags) as sim,
        redis_server(tmp / "fleet-learned") as server,
    ):
        ids = await _submit_paused(server.url, requests)
        with workers(4, server.url, sim, MSGQ_UVLOOP="true"):
            elapsed = await _drain(server.url, ids)
        stats = sim_stats(sim)
    ideal = max(0, n - rpm) / (rpm / 60)  # the full bucket at once, then the rate
    calls = stats["received"]
    throttled = stats["by_status"].get("429", 0)
    return [
        n,
        rpm,
        round(elapsed, 1),
        round(ideal, 1),
        f"{ideal / elapsed:.3f}",
        throttled,
        f"{throttled / max(calls, 1):.2%}",
    ]


async def fair_share_learned(
    tmp: Path, bulk: int = 5000, interactive: int = 40, rpm: int = 600
) -> list[Any]:
    """Interactive jobs, one every 0.5 s, behind `bulk` queued bulk jobs; learned limits only."""
    flags = ["--rpm", str(rpm), "--latency-ms", "1500", "--ms-per-token", "5"]
    with simulator(*flags) as sim, redis_server(tmp / "fair-learned") as server:
        ids = await _submit_paused(server.url, [text_request(60)] * bulk, priority="bulk")
        with workers(2, server.url, sim, MSGQ_UVLOOP="true"):
            settings = Settings(_env_file=None, redis_url=server.url)
            async with (
                Client.from_url(server.url, settings) as client,
                Redis.from_url(server.url) as redis,
            ):
                await resume_fleet(redis, settings.keys)
                await asyncio.sleep(15)  # the limit is learned and the bulk backlog flows
                urgent = []
                for i in range(interactive):
                    body = {**text_request(60), "messages": [{"role": "user", "content": f"u{i}"}]}
                    urgent.append((await client.submit(body, priority="interactive")).id)
                    await asyncio.sleep(0.5)
                records = [await client.wait(i, timeout=120) for i in urgent]
                left = sum(
                    1
                    for r in await JobStore.from_settings(redis, settings).get_many(ids[-500:])
                    if r and r.status is JobStatus.QUEUED
                )
        stats = sim_stats(sim)
    waits = sorted(
        (r.started_at - r.created_at).total_seconds() for r in records if r.started_at is not None
    )
    return [
        bulk,
        interactive,
        round(statistics.median(waits), 2),
        round(waits[max(0, int(len(waits) * 0.99) - 1)], 2),
        round(waits[-1], 2),
        left,
        stats["by_status"].get("429", 0),
    ]


async def report(tmp: Path, table: Table) -> None:
    table(
        f"One worker at {LATENCY_MS / 1000:g} s a call: msgq against an aiohttp loop at the same "
        "concurrency on the same simulator (3,000 jobs; ideal = concurrency / latency)",
        [
            "calls",
            "concurrency",
            "jobs",
            "aiohttp jobs/s",
            "msgq jobs/s",
            "msgq ÷ aiohttp",
            "ideal jobs/s",
            "worker CPU ms/job",
            "peak RSS per call in flight",
        ],
        [
            await one_worker(tmp, concurrency=512, n=3000, stream=False, warm=True),
            await one_worker(tmp, concurrency=512, n=3000, stream=False, warm=False),
            await one_worker(tmp, concurrency=256, n=3000, stream=True, warm=True),
        ],
    )
    table(
        f"Upstream transport at {LATENCY_MS / 1000:g} s a call: calls/s and client CPU per call "
        "(3,000 calls; ideal 171/s)",
        ["client", "concurrency", "calls/s", "CPU ms/call"],
        await transport(),
    )
    table(
        "A fleet against learned limits: 4 workers, 600 RPM simulator, nothing configured in "
        "msgq (ideal = the minute's bucket at once, then the rate)",
        ["jobs", "RPM", "wall_s", "ideal_s", "utilisation", "429s", "429 share"],
        [await fleet_learned(tmp)],
    )
    table(
        "Fair share with learned limits: interactive jobs (one per 0.5 s) behind a bulk backlog, "
        "600 RPM, 2 workers, nothing configured: wait from submission to start",
        ["bulk", "interactive", "p50 s", "p99 s", "max s", "bulk still queued (last 500)", "429s"],
        [await fair_share_learned(tmp)],
    )


def _print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    print(f"\n### {title}\n\n| {' | '.join(columns)} |\n|{'---|' * len(columns)}")
    for row in rows:
        print(f"| {' | '.join(str(x) for x in row)} |")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(report(Path(tempfile.mkdtemp(prefix="msgq-real-")), _print_table))
