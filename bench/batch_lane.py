"""The batch lane's figures: 2,000 images captioned in each lane (cost, wall time, upstream
requests), and the memory of reading a 100,000-line results file.

`python -m bench.batch_lane` runs just these; `make bench` (bench/run.py) runs them too.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.harness import KEY, redis_server, sim_stats, simulator, workers
from msgq.dev.stack import msgq_command

PROCESSING_S = 30.0  # the simulator's batch processing time (the API: most within 1 h)
LANE_ENV = {"MSGQ_BATCH_MAX_WAIT_S": "5", "MSGQ_BATCH_POLL_S": "2", "MSGQ_BATCH_POLL_MAX_S": "5"}


def _photos(folder: Path, n: int) -> None:
    from PIL import Image

    folder.mkdir(exist_ok=True)
    for i in range(n):
        # Distinct pixels per image: identical images would be deduplicated into one job.
        Image.new("RGB", (320, 240), (i % 256, i // 256 * 16, 90)).save(folder / f"{i:05}.png")


async def lanes(tmp: Path, n: int = 2000) -> list[list[Any]]:
    """`msgq caption --lane realtime` then `--lane batch` over the same n images, 2 workers."""
    _photos(tmp / "lane-photos", n)
    rows = []
    for lane in ("realtime", "batch"):
        with (
            simulator("--latency-ms", "150", "--batch-processing-s", str(PROCESSING_S)) as sim,
            redis_server(tmp / f"lane-{lane}") as redis,
            workers(2, redis.url, sim, **LANE_ENV),
        ):
            out = tmp / f"lane-{lane}.jsonl"
            args = ["caption", str(tmp / "lane-photos"), "--out", str(out), "--lane", lane]
            started = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                *msgq_command(*args),
                env={**os.environ, "REDIS_URL": redis.url},
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await proc.wait()
            elapsed = time.perf_counter() - started
            stats = sim_stats(sim)
        captions = [json.loads(line) for line in out.read_text().splitlines()]
        calls = stats["batches"]["calls"]
        rows.append(
            [
                lane,
                n,
                sum(1 for c in captions if c["status"] == "succeeded"),
                round(sum(c["cost_usd"] or 0 for c in captions), 4),
                round(elapsed, 1),
                stats["received"],
                ", ".join(f"{k} {v}" for k, v in sorted(calls.items())) or "-",
                proc.returncode,
            ]
        )
    ratio = rows[1][3] / rows[0][3] if rows[0][3] else 0
    rows.append(["batch ÷ realtime", "", "", f"{ratio:.3f}", "", "", "", ""])
    return rows


# ru_maxrss survives fork+exec (a child reports its parent's peak if higher): read this
# process's own high-water mark instead.
PEAK = """
def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
"""
READER = (
    PEAK
    + """
import asyncio, sys, httpx, orjson
from worker.lane.api import LaneApi

async def main(url, key, batch, whole):
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300) as http:
        api = LaneApi(http)
        lines = size = 0
        if whole:  # the naive way, for comparison: the whole body, then split
            body = (await http.get(f"/v1/messages/batches/{batch}/results")).content
            for line in body.splitlines():
                orjson.loads(line); lines += 1; size += len(line)
        else:
            async with api.result_lines(f"/v1/messages/batches/{batch}/results") as stream:
                async for line in stream:
                    orjson.loads(line); lines += 1; size += len(line)
    print(lines, size, peak_kib())

asyncio.run(main(*sys.argv[1:4], sys.argv[4] == "whole"))
"""
)


async def results_memory() -> list[list[Any]]:
    """Peak RSS of a process reading a results file: msgq's line reader on 10,000 and 100,000
    lines (flat: the same peak), and, for contrast, reading the whole body first. Every reader
    imports the same modules; "above idle" subtracts a process that imports them and reads
    nothing (the rest is the event loop, the client and its buffers)."""
    small = {
        "model": "claude-haiku-4-5",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
    }
    rows = []
    with simulator("--batch-processing-s", "0") as sim:
        headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
        ids = {}
        async with httpx.AsyncClient(base_url=sim, headers=headers, timeout=300) as http:
            for lines in (10_000, 100_000):
                body = {"requests": [{"custom_id": f"r{i}", "params": small} for i in range(lines)]}
                ids[lines] = (await http.post("/v1/messages/batches", json=body)).json()["id"]
        imports = "import httpx, orjson, worker.lane.api\n"
        idle = _rss_kib(["-c", PEAK + imports + "print(0, 0, peak_kib())"])
        for lines, mode in ((10_000, "stream"), (100_000, "stream"), (100_000, "whole")):
            count, size, peak = _rss_kib(["-c", READER, sim, KEY, ids[lines], mode])
            rows.append(
                [
                    "line by line (msgq)" if mode == "stream" else "whole body, then lines",
                    count,
                    f"{size / 1e6:.1f} MB",
                    f"{peak / 1024:.1f} MiB",
                    f"{(peak - idle[2]) / 1024:.1f} MiB",
                ]
            )
    return rows


def _rss_kib(args: list[str]) -> tuple[int, int, int]:
    out = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, check=True, timeout=600
    ).stdout.split()
    return int(out[0]), int(out[1]), int(out[2])


LANE_COLUMNS = [
    "lane",
    "images",
    "succeeded",
    "cost_usd",
    "wall_s",
    "/v1/messages calls",
    "Batches API calls",
    "exit",
]
MEMORY_COLUMNS = ["reader", "lines", "file", "peak RSS", "above an idle reader"]


Table = Callable[[str, list[str], list[list[Any]]], None]


async def report(tmp: Path, table: Table) -> None:
    """Both measurements, as tables (bench.run's `table` prints and collects them)."""
    table(
        f"Batch lane vs realtime: 2,000 images (320x240 PNG) through `msgq caption`, 2 workers; "
        f"simulator 150 ms latency, batch processing {PROCESSING_S:g} s, flush after 5 s",
        LANE_COLUMNS,
        await lanes(tmp),
    )
    table(
        "Reading a results file (peak RSS of the reading process, VmHWM)",
        MEMORY_COLUMNS,
        await results_memory(),
    )


if __name__ == "__main__":
    import tempfile

    from bench.run import report as collected
    from bench.run import table

    asyncio.run(report(Path(tempfile.mkdtemp(prefix="msgq-bench-lane-")), table))
    print("\n".join(collected))
