"""`make bench`: five measurements, each against a baseline run in the same process, and the
peers (bench/peers: arq, Celery, BullMQ, LiteLLM's proxy, each installed under
~/.cache/msgq-bench on first use and measured beside msgq and an aiohttp loop).

Prints tables and writes BENCHMARKS.md. Long: about 30 minutes on a 2-core machine (the
user's-world section alone, `python -m bench.real_load`, about 15).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table

from bench import batch_lane, cluster, fair_share, peers, real_load
from bench.baseline import raw_httpx_run, sdk_semaphore_run
from bench.ceiling import otlp_sink
from bench.ceiling import report as ceiling_report
from bench.dropin import report as dropin_report
from bench.harness import (
    KEY,
    redis_server,
    run_wave,
    sim_stats,
    simulator,
    text_request,
    workers,
)
from bench.noop import arq_noop_jobs_per_s
from bench.notes import NOTES
from bench.streaming import report as streaming_report
from bench.ui import page_times as ui_page_times
from msgq.client import Client
from msgq.dev.stack import msgq_command
from msgq.settings import Settings

RPM = 1200
OUT_TOKENS = 60  # max_tokens; the simulator's replies to PROMPT stop near 35
console = Console()
report: list[str] = []


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*(str(x) for x in r))
    console.print(t)
    report.append(f"### {title}\n\n| {' | '.join(columns)} |\n|{'---|' * len(columns)}")
    report.extend(f"| {' | '.join(str(x) for x in r)} |" for r in rows)
    report.append("")


def limits_for(in_per_req: int, out_per_req: int) -> tuple[list[str], str]:
    """Simulator flags and msgq's MSGQ_RATE_LIMITS: RPM binds, and so do ITPM and OTPM."""
    itpm, otpm = RPM * in_per_req, RPM * out_per_req * 3 // 2
    flags = [
        "--rpm",
        str(RPM),
        "--itpm",
        str(itpm),
        "--otpm",
        str(otpm),
        "--latency-ms",
        "150",
        "--ms-per-token",
        "2",
    ]
    return flags, json.dumps({"haiku": {"rpm": RPM, "itpm": itpm, "otpm": otpm}})


def ideal_s(n: int) -> float:
    """The best any client can do: the full bucket (a minute's worth) at once, then the rate."""
    return max(0, n - RPM) / (RPM / 60)


async def utilisation(tmp: Path, n: int, worker_count: int) -> dict[str, Any]:
    in_tokens = len(text_request()["messages"][0]["content"]) // 4 + 1
    flags, limits = limits_for(in_tokens, OUT_TOKENS)
    with (
        redis_server(tmp / f"u{worker_count}-{n}") as redis,
        simulator(*flags) as sim,
        workers(worker_count, redis.url, sim, MSGQ_RATE_LIMITS=limits),
    ):
        elapsed, statuses = await run_wave(redis.url, [text_request(OUT_TOKENS)] * n)
        stats = sim_stats(sim)
    calls = stats["received"]
    return {
        "workers": worker_count,
        "n": n,
        "wall_s": round(elapsed, 1),
        "utilisation": round(ideal_s(n) / max(elapsed - 0.0, 1e-9), 3),
        "wall/(N/limit)": round(elapsed / (n / (RPM / 60)), 3),
        "429s": stats["by_status"].get("429", 0),
        "429_share": f"{stats['by_status'].get('429', 0) / calls:.2%}",
        "lost": n - statuses.get("succeeded", 0),
    }


async def baseline_utilisation(n: int) -> dict[str, Any]:
    in_tokens = len(text_request()["messages"][0]["content"]) // 4 + 1
    flags, _ = limits_for(in_tokens, OUT_TOKENS)
    with simulator(*flags) as sim:
        elapsed, lost = await sdk_semaphore_run(sim, KEY, [text_request(OUT_TOKENS)] * n)
        stats = sim_stats(sim)
    return {
        "n": n,
        "wall_s": round(elapsed, 1),
        "utilisation": round(ideal_s(n) / elapsed, 3),
        "wall/(N/limit)": round(elapsed / (n / (RPM / 60)), 3),
        "429s": stats["by_status"].get("429", 0),
        "429_share": f"{stats['by_status'].get('429', 0) / stats['received']:.2%}",
        "lost": lost,
    }


async def ceiling(
    tmp: Path, n: int = 2000, concurrency: int = 16, rounds: int = 3
) -> list[list[Any]]:
    """Submit and wait in one wave (the producer shares the cores), against a bare httpx loop:
    `rounds` interleaved rounds, medians (one run on 2 shared cores swings by ±15%)."""
    raws: list[float] = []
    ours: list[float] = []
    with simulator() as sim:
        for r in range(rounds):
            raw_s = await raw_httpx_run(sim, KEY, [text_request()] * n, concurrency=concurrency)
            with (
                redis_server(tmp / f"ceiling-{r}") as redis,
                workers(1, redis.url, sim, MSGQ_MAX_JOBS=str(concurrency)),
            ):
                msgq_s, _ = await run_wave(redis.url, [text_request()] * n)
            raws.append(n / raw_s)
            ours.append(n / msgq_s)
        with redis_server(tmp / "noop") as redis:
            noop = await arq_noop_jobs_per_s(redis.url, n, concurrency)
    ratios = [m / r for m, r in zip(ours, raws, strict=True)]
    return [
        ["raw httpx loop", concurrency, round(statistics.median(raws)), "1.00", "-"],
        [
            "msgq, 1 worker process",
            concurrency,
            round(statistics.median(ours)),
            f"{statistics.median(ratios):.2f}",
            " / ".join(f"{x:.2f}" for x in ratios),
        ],
        ["arq no-op jobs (reference)", concurrency, round(noop), "-", "-"],
    ]


async def added_latency(tmp: Path, samples: int = 200) -> list[float]:
    with (
        simulator() as sim,
        redis_server(tmp / "latency") as redis,
        workers(1, redis.url, sim),
    ):
        settings = Settings(_env_file=None, redis_url=redis.url)
        async with (
            Client(Redis.from_url(redis.url), settings) as client,
            httpx.AsyncClient(base_url=sim) as http,
        ):
            gaps: list[float] = []
            for _ in range(samples):
                await http.post("/_sim/reset")
                submitted = time.time()
                job = await client.submit(text_request(5))
                await client.wait(job.id, timeout=30)
                seen = (await http.get("/_sim/requests", params={"limit": 1})).json()
                gaps.append((seen["requests"][0]["time"] - submitted) * 1000)
    return gaps


async def memory(tmp: Path, n: int = 5000) -> list[list[Any]]:
    from bench.harness import caption_request

    rows = []
    with redis_server(tmp / "memory") as redis:
        settings = Settings(_env_file=None, redis_url=redis.url)
        async with (
            Client(Redis.from_url(redis.url), settings) as client,
            Redis.from_url(redis.url) as plain,
        ):
            for label, request, count in (
                ("queued text job", text_request(), n),
                ("queued caption job (1568 px JPEG)", caption_request(), 200),
            ):
                await plain.flushall()
                before = (await plain.info("memory"))["used_memory"]
                for chunk in range(0, count, 200):
                    await asyncio.gather(
                        *(client.submit(request) for _ in range(min(200, count - chunk)))
                    )
                after = (await plain.info("memory"))["used_memory"]
                rows.append([label, count, round((after - before) / count)])
    with simulator() as sim, redis_server(tmp / "records") as redis, workers(1, redis.url, sim):
        async with Redis.from_url(redis.url) as r:
            base = (await r.info("memory"))["used_memory"]
            await run_wave(redis.url, [text_request()] * 2000)
            done = (await r.info("memory"))["used_memory"]
        rows.append(
            ["stored succeeded record (with its Message)", 2000, round((done - base) / 2000)]
        )
    return rows


async def captioning(tmp: Path, n: int = 2000) -> list[list[Any]]:
    """2,000 small photos through `msgq caption` at the default window, 2 workers."""
    from PIL import Image

    photos = tmp / "photos"
    photos.mkdir()
    for i in range(n):
        # Distinct pixels per image: identical images would be deduplicated into one job.
        Image.new("RGB", (320, 240), (i % 256, i // 256 * 16, 90)).save(photos / f"{i:05}.png")
    env = {**os.environ}
    with (
        simulator("--latency-ms", "150") as sim,
        redis_server(tmp / "caption") as redis,
        workers(2, redis.url, sim),
    ):
        async with Redis.from_url(redis.url) as r:
            base = (await r.info("memory"))["used_memory"]
            peak = base
            proc = await asyncio.create_subprocess_exec(
                *msgq_command(
                    "caption",
                    str(photos),
                    "--prompt",
                    "Describe it.",
                    "--out",
                    str(tmp / "captions.jsonl"),
                ),
                env={**env, "REDIS_URL": redis.url},
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            started = time.perf_counter()
            while proc.returncode is None:
                peak = max(peak, (await r.info("memory"))["used_memory"])
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 0.05)
            elapsed = time.perf_counter() - started
    return [
        [
            n,
            "64 (default)",
            round(elapsed, 1),
            round(n / elapsed, 1),
            f"{(peak - base) / 1024:.0f} KiB",
            proc.returncode,
        ]
    ]


async def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="msgq-bench-"))
    report.append(
        f"# msgq benchmarks\n\nMachine: {platform.platform()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}. Measured by `make bench` "
        f"on {time.strftime('%Y-%m-%d')}. Simulator latency 150 ms + 2 ms/output "
        "token; limits RPM 1,200 with ITPM and OTPM binding at the same rate.\n"
    )
    console.rule("0. the user's world: seconds of latency, limits learned from headers")
    await real_load.report(tmp, table)
    console.rule("1. utilisation: 3,000 jobs, 4 workers, limit 1,200 RPM")
    msgq_row = await utilisation(tmp, 3000, 4)
    base_row = await baseline_utilisation(3000)
    columns = ["run", "wall_s", "utilisation", "wall/(N/limit)", "429s", "429_share", "lost"]
    table(
        "Utilisation (3,000 jobs against 1,200 RPM; ideal = drain the bucket, then the rate)",
        columns,
        [
            ["msgq, 4 workers", *(msgq_row[c] for c in columns[1:])],
            ["SDK + semaphore(50)", *(base_row[c] for c in columns[1:])],
        ],
    )
    console.rule("2. ceiling")
    table(
        "Ceiling end to end: 2,000 jobs submitted and awaited in one wave (the producer on the "
        "same 2 cores), zero-latency simulator, no limits; 3 interleaved rounds, medians",
        ["client", "concurrency", "per second", "msgq ÷ raw", "each round"],
        await ceiling(tmp),
    )
    console.rule("3. added latency")
    gaps = sorted(await added_latency(tmp))
    table(
        "Added latency, idle system: submit → simulator receives (default settings)",
        ["samples", "p50 ms", "p99 ms", "max ms"],
        [
            [
                len(gaps),
                round(statistics.median(gaps), 1),
                round(gaps[int(len(gaps) * 0.99) - 1], 1),
                round(gaps[-1], 1),
            ]
        ],
    )
    console.rule("4. memory")
    table("Redis memory", ["what", "count", "bytes each"], await memory(tmp))
    console.rule("6. captioning")
    table(
        "Captioning 2,000 distinct small images (320x240 PNG), 2 workers, 150 ms latency",
        ["images", "window", "wall_s", "images/s", "Redis peak above idle", "exit"],
        await captioning(tmp),
    )
    console.rule("7. batch lane")
    await batch_lane.report(tmp, table)
    console.rule("5. scale-out")
    rows = [await utilisation(tmp, 1500, w) for w in (1, 2, 4, 8)]
    table(
        "Scale-out (1,500 jobs against 1,200 RPM)",
        ["workers", "wall_s", "utilisation", "429s", "lost"],
        [[r["workers"], r["wall_s"], r["utilisation"], r["429s"], r["lost"]] for r in rows],
    )
    console.rule("7. streaming")
    await streaming_report(tmp, table)
    console.rule("7b. drop-in added latency")
    await dropin_report(tmp, table)
    console.rule("8. dashboard")
    table(
        "Dashboard page times at 100,000 records (admin session, real HTTP, 40 requests each)",
        ["page", "path", "p50 ms", "p99 ms"],
        await ui_page_times(),
    )
    console.rule("9. fair share")
    await fair_share.report(tmp, table)
    console.rule("10. ceiling, the issue's method, with Redis per job")
    with otlp_sink() as sink:  # tracing on: every span exported over OTLP/HTTP to loopback
        await ceiling_report(
            tmp,
            table,
            {
                "msgq, 1 worker (asyncio loop)": {"MSGQ_UVLOOP": "false"},
                "msgq, 1 worker (uvloop)": {"MSGQ_UVLOOP": "true"},
                "msgq, 1 worker, scheduler off": {"MSGQ_UVLOOP": "true", "MSGQ_SCHEDULER": "false"},
                "msgq, 1 worker (uvloop), tracing on": {"MSGQ_UVLOOP": "true", **sink},
            },
        )
    console.rule("11. peers: arq, Celery, BullMQ, LiteLLM's proxy, each in its own environment")
    await peers.report(tmp, table)
    console.rule("12. Redis Cluster beside one node")
    await cluster.report(tmp, table)


if __name__ == "__main__":
    asyncio.run(main())
    report.append(NOTES)
    Path("BENCHMARKS.md").write_text("\n".join(report) + "\n", encoding="utf-8")
    console.print("wrote BENCHMARKS.md")
