"""Issue 16's ceiling, measured the way the issue states it, with Redis's cost per job.

Pre-enqueued jobs (no worker running while they are submitted); then one `msgq worker` at the
default concurrency drains them against a zero-latency simulator. Throughput is taken from the
records: first `started_at` to last `finished_at`. The reference is a bare httpx loop at
concurrency 16 against the same simulator, in the same run. Redis's own counters give, per job,
the commands it executed, the socket reads it served (one per client round trip, near enough)
and its CPU time, as deltas over the drain only.

`python -m bench.ceiling` runs just this; `make bench` runs it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from statistics import median
from typing import Any

from redis.asyncio import Redis

from bench.baseline import raw_httpx_run
from bench.harness import KEY, redis_server, simulator, text_request, workers
from msgq.client import Client
from msgq.settings import Settings
from schemas import JobRecord

Table = Callable[[str, list[str], list[list[Any]]], None]


@contextlib.contextmanager
def otlp_sink() -> Iterator[dict[str, str]]:
    """A loopback OTLP/HTTP endpoint that accepts and drops every export: the worker pays the
    whole cost of tracing (spans, metrics, protobuf, HTTP) and no collector's. Yields the
    OTEL_* variables that point a worker at it."""

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}"}
    finally:
        server.shutdown()
        server.server_close()


async def redis_counters(redis: Redis) -> dict[str, float]:
    cpu = await redis.info("cpu")
    stats = await redis.info("stats")
    commands = await redis.info("commandstats")
    return {
        "cpu_s": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
        "reads": float(stats.get("total_reads_processed", 0)),
        "commands": float(sum(v["calls"] for v in commands.values())),
    }


async def drain(
    tmp: Path, sim: str, n: int, env: dict[str, str], label: str, worker_count: int = 1
) -> dict[str, Any]:
    with redis_server(tmp / f"ceiling-{label}") as server:
        scheduler = env.get("MSGQ_SCHEDULER", "true") == "true"
        settings = Settings(_env_file=None, redis_url=server.url, scheduler=scheduler)  # type: ignore[call-arg]
        async with (
            Client(Redis.from_url(server.url), settings) as client,
            Redis.from_url(server.url) as redis,
        ):
            ids: list[str] = []
            for start in range(0, n, 250):
                jobs = await asyncio.gather(
                    *(client.submit(text_request()) for _ in range(min(250, n - start)))
                )
                ids += [j.id for j in jobs]
            before = await redis_counters(redis)
            wall = time.perf_counter()
            with workers(worker_count, server.url, sim, MSGQ_MAX_JOBS="16", **env):
                while True:
                    raws = await redis.mget([f"msgq:job:{i}" for i in ids[-200:]])
                    if all(r and JobRecord.model_validate_json(r).status.terminal for r in raws):
                        done = [JobRecord.model_validate_json(r) for r in await _all(redis, ids)]
                        if all(r.status.terminal for r in done):
                            break
                    await asyncio.sleep(0.2)  # polling for the end of the drain, not timing it
                after = await redis_counters(redis)
            wall = time.perf_counter() - wall
    first = min(r.started_at for r in done if r.started_at)
    last = max(r.finished_at for r in done if r.finished_at)
    span = (last - first).total_seconds()
    return {
        "label": label,
        "jobs_per_s": n / span,
        "succeeded": sum(r.status.value == "succeeded" for r in done),
        "commands": (after["commands"] - before["commands"]) / n,
        "reads": (after["reads"] - before["reads"]) / n,
        "cpu_us": (after["cpu_s"] - before["cpu_s"]) * 1e6 / n,
        "wall": wall,
    }


async def _all(redis: Redis, ids: list[str]) -> list[bytes]:
    out: list[bytes] = []
    for start in range(0, len(ids), 1000):
        out += [r for r in await redis.mget([f"msgq:job:{i}" for i in ids[start : start + 1000]])]
    return out


async def measure(
    tmp: Path,
    n: int = 3000,
    variants: dict[str, dict[str, str]] | None = None,
    rounds: int = 3,
) -> list[list[Any]]:
    """`rounds` rounds, each a raw loop then every variant, so each ratio compares runs made
    minutes apart at most; the table shows medians (one run on a shared 2-core machine swings
    by ±15%). The ratio column is the median of the per-round ratios."""
    variants = variants or {"msgq, 1 worker": {}}
    raws: list[float] = []
    split: list[float] = []
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in variants}
    with simulator() as sim:
        for r in range(rounds):
            raw = n / await raw_httpx_run(sim, KEY, [text_request()] * n, concurrency=16)
            raws.append(raw)
            split.append(
                n / await raw_httpx_run(sim, KEY, [text_request()] * n, concurrency=16, clients=8)
            )
            for label, env in variants.items():
                name = f"{label.replace(' ', '-').replace(',', '')}-{r}"
                got = await drain(tmp, sim, n, env, name)
                runs[label].append({**got, "ratio": got["jobs_per_s"] / raw})
    rows: list[list[Any]] = [
        [f"raw httpx loop, concurrency 16 ({rounds} runs)", round(median(raws)), "1.00"]
        + ["-"] * 4,
        [
            "raw httpx loop, concurrency 16 over 8 clients (msgq's split; reference)",
            round(median(split)),
            f"{median(s / r for s, r in zip(split, raws, strict=True)):.2f}",
        ]
        + ["-"] * 4,
    ]
    for label, results in runs.items():
        rows.append(
            [
                label,
                round(median(g["jobs_per_s"] for g in results)),
                f"{median(g['ratio'] for g in results):.2f}",
                " / ".join(f"{g['ratio']:.2f}" for g in results),
                round(median(g["commands"] for g in results), 1),
                round(median(g["reads"] for g in results), 1),
                round(median(g["cpu_us"] for g in results)),
            ]
        )
    return rows


async def one_redis(tmp: Path, n: int = 6000, worker_count: int = 8) -> list[list[Any]]:
    """Eight worker processes on one Redis, zero latency: the fleet's rate and Redis's cost."""
    with simulator() as sim:
        got = await drain(tmp, sim, n, {}, "eight", worker_count=worker_count)
    per_core = 1e6 / got["cpu_us"] if got["cpu_us"] else float("inf")
    return [
        [
            worker_count,
            n,
            round(got["jobs_per_s"]),
            round(got["cpu_us"]),
            round(got["commands"], 1),
            round(per_core),
            round(per_core / 170, 1),
        ]
    ]


ONE_REDIS_COLUMNS = [
    "worker processes",
    "jobs",
    "jobs/s (all workers)",
    "Redis CPU µs/job",
    "Redis commands/job",
    "jobs/s one Redis core sustains",
    "top-tier orgs (10,000 RPM ≈ 170/s) per Redis",
]


COLUMNS = [
    "run",
    "jobs/s (first start → last finish), median",
    "÷ raw, median",
    "÷ raw, each round",
    "Redis commands/job",
    "Redis reads/job (≈ round trips)",
    "Redis CPU µs/job",
]


async def report(
    tmp: Path, table: Table, variants: dict[str, dict[str, str]] | None = None
) -> None:
    table(
        "Ceiling: 3,000 pre-enqueued jobs, one worker (concurrency 16), zero-latency "
        "simulator, vs a bare httpx loop (concurrency 16); 3 interleaved rounds, medians",
        COLUMNS,
        await measure(tmp, variants=variants),
    )
    table(
        "How far one Redis goes: 8 worker processes, one Redis, zero-latency simulator "
        "(all on the same 2 cores)",
        ONE_REDIS_COLUMNS,
        await one_redis(tmp),
    )


if __name__ == "__main__":
    import sys
    import tempfile

    from bench.run import report as collected
    from bench.run import table

    extra = {"msgq, 1 worker, uvloop": {"MSGQ_UVLOOP": "true"}} if "--uvloop" in sys.argv else {}
    with otlp_sink() as sink:
        if "--tracing" in sys.argv:
            extra["msgq, 1 worker, tracing on"] = {"MSGQ_UVLOOP": "false", **sink}
        asyncio.run(
            report(
                Path(tempfile.mkdtemp(prefix="msgq-bench-ceiling-")),
                table,
                {"msgq, 1 worker": {"MSGQ_UVLOOP": "false"}, **extra},
            )
        )
    print("\n".join(collected))
