"""What streaming costs: events/s one worker sustains over 16 concurrent streams at zero latency,
against the same worker not streaming (`MSGQ_STREAM_MIN_MAX_TOKENS` above every job's
max_tokens: the plain call, kept for this comparison), and Redis commands per streamed job.

`python -m bench.streaming` runs just this and prints the tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.harness import redis_server, run_wave, simulator, text_request, workers
from msgq.dev.simulator.events import message_events
from msgq.dev.simulator.replies import build_message

PLAIN = {"MSGQ_STREAM_MIN_MAX_TOKENS": str(10**9)}  # no job reaches it: never streamed
STREAMED = {"MSGQ_STREAM_MIN_MAX_TOKENS": "0"}  # every job streams (the default starts at 1,024)
WRITES = {
    "set",
    "publish",
    "evalsha",
    "eval",
    "zadd",
    "zrem",
    "del",
    "unlink",
    "hset",
    "hincrby",
    "pexpire",
    "expire",
    "incr",
    "psetex",
    "setex",
}

SHOWN = ("set", "publish", "evalsha", "watch", "zadd", "zrem")  # where streaming shows


def workers_cpu_s() -> float:
    """CPU seconds used so far by this process's `msgq worker` children (from /proc)."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
            if int(fields[1]) == os.getpid() and cmdline.endswith(b"msgq.cli.main\0worker\0"):
                total += (int(fields[11]) + int(fields[12])) / tick
    return total


def events_per_reply(max_tokens: int, output_tokens: int | None) -> int:
    """Events in one streamed reply (message_start, ping, block, deltas, message_delta, stop)."""
    message = build_message(
        text_request(max_tokens), seed=0, request_id="req_x", output_tokens=output_tokens
    )
    return len(message_events(message))


async def throughput(tmp: Path, n: int = 1000, rounds: int = 3) -> list[list[Any]]:
    """Jobs/s and events/s, streaming vs not, 1 worker at 16 jobs, zero-latency simulator.

    The two modes alternate, `rounds` times each, and each keeps its best wave: on a shared
    2-core machine a single wave is at the mercy of whatever else runs.
    """
    rows: list[list[Any]] = []
    for label, max_tokens, output in (("~35-token replies", 60, None), ("500-token", 600, 500)):
        flags = ["--output-tokens", str(output)] if output else []
        best = {"non-streaming": 0.0, "streaming": 0.0}
        cpu_ms = {"non-streaming": 1e9, "streaming": 1e9}  # the worker's CPU per job
        with simulator(*flags) as sim:
            for turn in range(rounds):
                for mode, env in (("non-streaming", PLAIN), ("streaming", STREAMED)):
                    with (
                        redis_server(tmp / f"t-{max_tokens}-{mode}-{turn}") as redis,
                        workers(1, redis.url, sim, MSGQ_MAX_JOBS="16", **env),
                    ):
                        used = workers_cpu_s()
                        elapsed, statuses = await run_wave(
                            redis.url, [text_request(max_tokens)] * n
                        )
                        used = workers_cpu_s() - used
                    assert statuses.get("succeeded") == n, statuses
                    best[mode] = max(best[mode], n / elapsed)
                    cpu_ms[mode] = min(cpu_ms[mode], used * 1000 / n)
        events = events_per_reply(max_tokens, output)
        plain, streamed = best["non-streaming"], best["streaming"]
        cpu_plain, cpu_streamed = cpu_ms["non-streaming"], cpu_ms["streaming"]
        rows.append([label, events, round(plain), round(streamed), round(streamed * events)])
        rows[-1] += [f"{streamed / plain:.2f}", f"{cpu_plain:.2f} / {cpu_streamed:.2f}"]
        rows[-1].append(round(events / cpu_streamed * 1000))
    return rows


async def redis_commands(tmp: Path, n: int = 32) -> list[list[Any]]:
    """Redis commands (and writes among them) per job, for 3-second jobs (3,000 tokens at
    1 ms each, so progress is recorded), 16 at a time; limits learned from the headers."""
    rows: list[list[Any]] = []
    flags = ["--output-tokens", "3000", "--ms-per-token", "1", "--otpm", "100000000"]
    with simulator(*flags) as sim:
        for mode, env in (("non-streaming", PLAIN), ("streaming", STREAMED)):
            with (
                redis_server(tmp / f"w-{mode}") as redis,
                workers(1, redis.url, sim, MSGQ_MAX_JOBS="16", **env),
            ):
                async with Redis.from_url(redis.url) as r:
                    await r.config_resetstat()
                    _, statuses = await run_wave(redis.url, [text_request(4000)] * n)
                    stats = await r.info("commandstats")
            assert statuses.get("succeeded") == n, statuses
            calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
            writes = sum(v for k, v in calls.items() if k in WRITES)
            rows.append(
                [mode, round(sum(calls.values()) / n, 1), round(writes / n, 1)]
                + [round(calls.get(name, 0) / n, 1) for name in SHOWN]
            )
    return rows


async def report(tmp: Path, table: Callable[[str, list[str], list[list[Any]]], None]) -> None:
    """Both tables, through `bench.run.table` (printed, and added to BENCHMARKS.md)."""
    table(
        "Streaming vs not: 1 worker, 16 concurrent jobs, zero-latency simulator, best of 3 "
        "alternating waves of 1,000 jobs",
        [
            "replies",
            "events/reply",
            "jobs/s plain",
            "jobs/s streamed",
            "events/s",
            "streamed ÷ plain",
            "worker CPU ms/job plain / streamed",
            "events per worker CPU-second",
        ],
        await throughput(tmp),
    )
    table(
        "Redis commands per job (3,000-token replies at 1 ms/token, 32 jobs, 16 at a time)",
        ["mode", "commands/job", "writes/job", *SHOWN],
        await redis_commands(tmp),
    )


async def main() -> None:
    from bench.run import console, table

    console.rule("7. streaming")
    await report(Path(tempfile.mkdtemp(prefix="msgq-bench-stream-")), table)


if __name__ == "__main__":
    asyncio.run(main())
