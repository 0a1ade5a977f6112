"""`make bench`: five measurements, each against a baseline run in the same process.

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

from bench import batch_lane, fair_share, real_load
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
        workers(1, redis.url, sim, MSGQ_POLL_DELAY_S="0.01"),
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
        "Added latency, idle system: submit → simulator receives (poll delay 10 ms, the default)",
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


NOTES = """### How to read these

- **Utilisation** compares the wall time with the best any client could do against the same
  token bucket: spend the full bucket (a minute's worth) at once, then exactly the refill rate.
  `wall/(N/limit)` is below 1 for everyone because the bucket starts full. The SDK baseline
  looks "faster" only because it gives up: after its two default retries it drops the request
  (`lost`), and more than half of its calls were answered 429.
- **Ceiling**: two measurements, each in 3 interleaved rounds (raw loop, then msgq) with
  medians, because a single run on this shared 2-core machine swings by ±15%. "Ceiling end to
  end" submits and awaits 2,000 jobs in one wave, so the producer's own CPU shares the cores
  with the worker, Redis and the simulator. "Ceiling" (the issue's method) pre-enqueues 3,000
  jobs and times the records from the first `started_at` to the last `finished_at`, against a
  bare httpx loop at concurrency 16. History on this machine, same method: **0.51** (asyncio) /
  0.60 (uvloop) at the start of the work, with 46.9 Redis commands, 12.8 socket reads (≈ round
  trips) and 450 µs of Redis CPU per job; 0.73 / 0.77 after the first levers (one
  compare-and-set script per record transition, one pipelined pick-up read, arq's pick-up as one
  script, fewer index writes, the dispatcher moving many jobs per script, short calls not
  streamed), at 7.0 round trips and ~310 µs. The rest of the way: (1) arq's per-job path
  replaced in `MsgqWorker` (one script claims every free slot's job and reads the payload, the
  try counter, the abort flag and msgq's record, ticket and pause flags with it; the terminal
  record's write also ends the job in arq's queue; one heartbeat per worker; one round trip
  per poll), 2.6 round trips a job; (2) redis-py 5.3's pool-wide lock around every connection
  checkout bypassed (redis-py #3692, fixed upstream after the 5.x line arq pins): it queued
  the worker's jobs behind each other; (3) the API calls spread over 8 small httpx clients:
  httpcore's pool walks every connection and waiting request on each call and each release, so
  one client at 16 calls in flight costs ~1.6 ms of CPU a call and runs ~600 calls/s, where 8
  clients run ~1,550/s. That last lever is why msgq now runs *faster* than the issue's raw
  loop; the second raw row splits the raw loop the same way, as the honest upper bound of a
  zero-latency client on this machine: against it msgq's own work (3 record/queue round trips,
  validation, the record's JSON) shows.
- **Latency** is arq's poll delay plus one Redis round trip: `MSGQ_POLL_DELAY_S` (10 ms default,
  arq's is 500 ms) trades idle Redis load (100 polls/s per idle worker) for latency.
- **Memory**: the caption payload is a 1568 px JPEG of random noise, the worst case; a real photo
  at that size is typically 200-400 KB. Records keep the Message, not the request or image.
- **Streaming**: the table forces streaming on and off (msgq streams from `max_tokens`
  1,024 by default). At zero latency the cost is per event (parsing SSE in
  Python): short replies cost the ceiling little; 500-token replies at full speed show the
  per-event CPU. The real API paces events (tens per second per stream), far below what one
  worker parses. Redis: a long job adds its progress writes (about one a second), a few
  PUBLISHes and limiter settlements; a job under a second adds nothing but the call.
- **Scale-out**: one worker is limited by its own concurrency (16 x latency), not the limiter;
  from two workers on, utilisation stays flat as workers are added, with no 429s.
- **Batch lane**: the same images and prompt give the same captions in both lanes, and the
  batch total is exactly half (every price halved, cache writes and reads included). The 2,000
  jobs went out in 2 upstream batches (the pool flushed 5 s after its first job, while the
  caption run was still submitting) and reached `/v1/messages` zero times. Reading results is
  flat: 10,000 and 100,000 lines peak at the same RSS (the 10 MiB above an idle process is the
  event loop, the HTTP client and its buffers), where reading the body whole grows with it.
"""


if __name__ == "__main__":
    asyncio.run(main())
    report.append(NOTES)
    Path("BENCHMARKS.md").write_text("\n".join(report) + "\n", encoding="utf-8")
    console.print("wrote BENCHMARKS.md")
