"""What streaming costs: events/s one worker sustains over 16 concurrent streams at zero latency,
against the same worker not streaming (`MSGQ_STREAM_MIN_MAX_TOKENS` above every job's
max_tokens: the plain call, kept for this comparison), and Redis commands per streamed job.

`python -m bench.streaming` runs just this and prints the tables.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.harness import redis_server, run_wave, simulator, text_request, workers
from worker.dev.simulator.replies import build_message
from worker.dev.simulator.streaming import message_events

PLAIN = {"MSGQ_STREAM_MIN_MAX_TOKENS": str(10**9)}  # no job reaches it: never streamed
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


def events_per_reply(max_tokens: int, output_tokens: int | None) -> int:
    """Events in one streamed reply (message_start, ping, block, deltas, message_delta, stop)."""
    message = build_message(
        text_request(max_tokens), seed=0, request_id="req_x", output_tokens=output_tokens
    )
    return len(message_events(message))


async def throughput(tmp: Path, n: int = 1000) -> list[list[Any]]:
    """Jobs/s and events/s, streaming vs not, 1 worker at 16 jobs, zero-latency simulator."""
    rows: list[list[Any]] = []
    for label, max_tokens, output in (("~35-token replies", 60, None), ("500-token", 600, 500)):
        flags = ["--output-tokens", str(output)] if output else []
        events = events_per_reply(max_tokens, output)
        per_s: dict[str, float] = {}
        with simulator(*flags) as sim:
            for mode, env in (("non-streaming", PLAIN), ("streaming", {})):
                with (
                    redis_server(tmp / f"t-{max_tokens}-{mode}") as redis,
                    workers(1, redis.url, sim, MSGQ_MAX_JOBS="16", **env),
                ):
                    elapsed, statuses = await run_wave(redis.url, [text_request(max_tokens)] * n)
                assert statuses.get("succeeded") == n, statuses
                per_s[mode] = n / elapsed
                streamed = mode == "streaming"
                rows.append(
                    [
                        label,
                        mode,
                        round(per_s[mode]),
                        round(per_s[mode] * events) if streamed else "-",
                        f"{per_s[mode] / per_s['non-streaming']:.2f}",
                    ]
                )
    return rows


async def redis_commands(tmp: Path, n: int = 32) -> list[list[Any]]:
    """Redis commands (and writes among them) per job, for 3-second jobs (3,000 tokens at
    1 ms each, so progress is recorded), 16 at a time; limits learned from the headers."""
    rows: list[list[Any]] = []
    flags = ["--output-tokens", "3000", "--ms-per-token", "1", "--otpm", "100000000"]
    with simulator(*flags) as sim:
        for mode, env in (("non-streaming", PLAIN), ("streaming", {})):
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
            writes = {k: v for k, v in calls.items() if k in WRITES}
            top = sorted(writes.items(), key=lambda kv: -kv[1])[:6]
            rows.append(
                [
                    mode,
                    round(sum(calls.values()) / n, 1),
                    round(sum(writes.values()) / n, 1),
                    ", ".join(f"{k} {v / n:.1f}" for k, v in top),
                ]
            )
    return rows


async def main() -> None:
    from bench.run import console, table

    tmp = Path(tempfile.mkdtemp(prefix="msgq-bench-stream-"))
    console.rule("7. streaming")
    table(
        "Streaming vs not: 1 worker, 16 concurrent jobs, zero-latency simulator, 1,000 jobs each",
        ["replies", "mode", "jobs/s", "events/s", "÷ non-streaming"],
        await throughput(tmp),
    )
    table(
        "Redis commands per job (3,000-token replies at 1 ms/token, 32 jobs, 16 at a time)",
        ["mode", "commands/job", "writes/job", "top writes per job"],
        await redis_commands(tmp),
    )


if __name__ == "__main__":
    asyncio.run(main())
