"""The peers in `make bench` (issue 33): msgq beside what a user would otherwise run, on the
same simulator in the same run, each peer installed into its own environment under
~/.cache/msgq-bench/<peer> (bench/peers/envs.py), never into msgq's venv.

- queue peers (bench/peers/queues.py): plain arq with one aiohttp session, Celery with the
  gevent pool (requests; httpx), BullMQ on Node with fetch; 3,000 jobs at 512 in flight, one
  worker process each, beside msgq's one-worker row and an aiohttp loop on the same simulator;
- LiteLLM's proxy beside msgq's drop-in `/v1/messages` (bench/peers/litellm_peer.py).

On 2 shared cores absolute rates move with whatever else runs, so every row carries the load
average at its start and its ratio to the aiohttp loop measured in the same run.

`python -m bench.peers` runs this section alone; MSGQ_BENCH_JOBS (3000) and MSGQ_BENCH_PEERS
(a comma list of label prefixes: arq, celery, bullmq, msgq, litellm) shrink it while developing.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import redis_server, simulator, text_request, workers
from bench.peers import litellm_peer
from bench.peers.common import load_average, tree_cpu_s
from bench.peers.queues import run_peer, selected
from bench.real_load import LATENCY_MS, TOP_TIER, _drain, _submit_paused, aiohttp_run, one_worker

Table = Callable[[str, list[str], list[list[Any]]], None]
IN_FLIGHT = 512
QUEUE_COLUMNS = [
    "runner",
    "versions",
    "jobs",
    "ok",
    "jobs/s",
    "÷ aiohttp",
    "worker CPU ms/job",
    "load avg at start",
    "note",
]


def _wanted(key: str) -> bool:
    wanted = os.environ.get("MSGQ_BENCH_PEERS")
    return not wanted or key in [w.strip().lower() for w in wanted.split(",")]


def _requests(n: int) -> list[dict[str, Any]]:
    return [
        {**text_request(60), "messages": [{"role": "user", "content": f"call {i}"}]}
        for i in range(n)
    ]


async def _msgq_defaults(tmp: Path, sim: str, n: int, base: float) -> list[Any]:
    """One msgq worker with nothing set (max_jobs 256, its default; learned limits)."""
    load = load_average()
    with redis_server(tmp / "peers-msgq-defaults") as server, workers(1, server.url, sim) as ps:
        await _drain(server.url, await _submit_paused(server.url, _requests(8)))
        ids = await _submit_paused(server.url, _requests(n))
        cpu0 = tree_cpu_s(ps[0].pid)
        seconds = await _drain(server.url, ids)
        cpu_ms = (tree_cpu_s(ps[0].pid) - cpu0) * 1000 / n
    rate = n / seconds
    label = "msgq, 1 worker, all defaults (max_jobs 256)"
    ratio = f"{rate / base:.2f}"
    note = "256 in flight: its own ideal is 85 jobs/s"
    return [label, "this tree", n, "-", round(rate, 1), ratio, f"{cpu_ms:.2f}", load, note]


async def queue_rows(tmp: Path, n: int) -> list[list[Any]]:
    rows: list[list[Any]] = []
    with simulator(*TOP_TIER, "--latency-ms", str(LATENCY_MS)) as sim:
        load = load_average()
        first = n / await aiohttp_run(sim, _requests(n), concurrency=IN_FLIGHT, stream=False)
        rows.append(["aiohttp loop, 1 session (baseline)", "-", n, n, round(first, 1)])
        rows[-1] += ["1.00", "-", load, "the first of two; ratios use their mean"]
        peers = selected()
        measured = [await run_peer(p, sim, tmp, n, first) for p in peers]
        load = load_average()
        last = n / await aiohttp_run(sim, _requests(n), concurrency=IN_FLIGHT, stream=False)
        base = statistics.mean([first, last])
        for row in measured:  # ratios against both baselines' mean, now that both are known
            if isinstance(row[4], float):
                row[5] = f"{row[4] / base:.2f}"
        if _wanted("msgq"):
            rows.append(await _msgq_defaults(tmp, sim, n, base))
        rows += measured
        rows.append(["aiohttp loop, 1 session (baseline, again)", "-", n, n, round(last, 1)])
        rows[-1] += [f"{last / base:.2f}", "-", load, ""]
    if _wanted("msgq"):  # real_load's own row: its own simulator and aiohttp loop, just before
        load = load_average()
        row = await one_worker(tmp, concurrency=IN_FLIGHT, n=n, stream=False, warm=True)
        label = "msgq, 1 worker, max_jobs 512, warm (bench.real_load.one_worker)"
        note = f"÷ its own loop just before ({row[3]} jobs/s); ÷ this table's: {row[4] / base:.2f}"
        rows.insert(1, [label, "this tree", n, "-", row[4], row[5], row[7], load, note])
    return rows


async def report(tmp: Path, table: Table) -> None:
    n = int(os.environ.get("MSGQ_BENCH_JOBS", "3000"))
    table(
        f"Peers, queues: {n:,} jobs at {IN_FLIGHT} in flight, one worker process each, the same "
        f"simulator ({LATENCY_MS / 1000:g} s a call, top-tier limits; ideal "
        f"{IN_FLIGHT / (LATENCY_MS / 1000):.0f} jobs/s), each with a Redis of its own; "
        "÷ aiohttp = against an aiohttp loop at the same concurrency in the same run",
        QUEUE_COLUMNS,
        await queue_rows(tmp, n),
    )
    if not _wanted("litellm"):
        return
    env = litellm_peer.install()
    if env.path is None:
        table("Peers, drop-in: LiteLLM proxy", ["runner", "note"], [["LiteLLM", env.reason]])
        return
    samples = int(os.environ.get("MSGQ_BENCH_SAMPLES", "200"))
    table(
        f"Peers, drop-in latency, idle (zero-latency simulator, {samples} samples interleaved "
        f"call by call; {env.versions}): proxy minus direct, per percentile",
        ["call", "samples", "p50 ms", "added p50 ms", "added p99 ms"],
        await litellm_peer.latency(env, tmp, samples),
    )
    calls = min(n, 1000)
    table(
        f"Peers, drop-in throughput: {calls:,} creates at 256 in flight, {LATENCY_MS / 1000:g} s "
        "simulator (ideal 85/s); CPU = the proxy's process tree (msgq: api + worker)",
        ["path", "calls", "ok", "calls/s", "÷ direct", "proxy CPU ms/call", "load avg at start"],
        await litellm_peer.throughput(env, tmp, calls, 256),
    )
