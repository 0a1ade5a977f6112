"""LiteLLM's proxy serving `/v1/messages` with the simulator as its Anthropic base, measured the
way bench/dropin.py measures msgq's drop-in, and msgq's drop-in beside it in the same run:

1. added latency, idle (zero-latency simulator): create and the first streamed text delta,
   direct / through msgq / through LiteLLM interleaved call by call, 200 samples each;
   each proxy's percentile minus the direct one;
2. throughput: 1,000 creates at 256 in flight against the 3 s simulator, calls/s and the
   proxy's CPU ms per call (its process tree; msgq's api and worker together).

No database (LiteLLM runs without one when none is configured), one master key, one worker
process for each proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson

from bench.dropin import API_PIDS, TENANT_KEY, api, create_ms, first_delta_ms, pct
from bench.harness import KEY, redis_server, simulator, text_request, workers
from bench.peers.common import load_average, tree_cpu_s
from bench.peers.envs import Env, python_env
from bench.real_load import LATENCY_MS, TOP_TIER
from msgq.dev.embedded_redis import free_port
from msgq.dev.stack import wait_http

MASTER_KEY = "sk-litellm-bench-master-0000"
CONFIG = """model_list:
  - model_name: claude-haiku-4-5
    litellm_params:
      model: anthropic/claude-haiku-4-5
      api_base: {sim}
      api_key: {key}
general_settings:
  master_key: {master}
"""


def install() -> Env:
    return python_env("litellm", ["litellm[proxy]"], ["litellm"])


PROXY_PIDS: list[int] = []


@contextlib.contextmanager
def proxy(env: Env, sim: str, tmp: Path) -> Iterator[str]:
    """`litellm --config` on a free port, one process; its log beside the config."""
    port = free_port()
    config = tmp / f"litellm-{port}.yaml"
    config.write_text(CONFIG.format(sim=sim, key=KEY, master=MASTER_KEY), encoding="utf-8")
    environment = {
        **os.environ,
        "LITELLM_LOG": "ERROR",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list at start
        "LITELLM_TELEMETRY": "False",
    }
    cmd = [str(env.bin / "litellm"), "--config", str(config), "--host", "127.0.0.1"]
    with (tmp / f"litellm-{port}.log").open("wb") as log:
        process = subprocess.Popen(
            [*cmd, "--port", str(port), "--num_workers", "1"],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    PROXY_PIDS.append(process.pid)
    try:
        wait_http(f"{url}/health/liveliness", timeout_s=180, process=process)
        yield url
    finally:
        PROXY_PIDS.remove(process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        process.wait(timeout=30)


def _added(label: str, direct: list[float], through: list[float]) -> list[Any]:
    median = sorted(through)[len(through) // 2] - sorted(direct)[len(direct) // 2]
    return [
        label,
        len(through),
        round(sorted(through)[len(through) // 2], 1),
        round(median, 1),
        round(pct(through, 0.99) - pct(direct, 0.99), 1),
    ]


async def latency(env: Env, tmp: Path, samples: int) -> list[list[Any]]:
    rows: list[list[Any]] = []
    with (
        simulator() as sim,
        redis_server(tmp / "peers-dropin") as redis,
        workers(1, redis.url, sim),
        api(redis.url, sim) as msgq,
        proxy(env, sim, tmp) as lite,
    ):
        targets = [(sim, KEY), (msgq, TENANT_KEY), (lite, MASTER_KEY)]
        async with httpx.AsyncClient(timeout=30) as http:
            for label, probe in (("create", create_ms), ("first text delta", first_delta_ms)):
                for _ in range(10):  # warm every path
                    for url, key in targets:
                        await probe(http, url, key)
                times: list[list[float]] = [[], [], []]
                for _ in range(samples):
                    for i, (url, key) in enumerate(targets):
                        times[i].append(await probe(http, url, key))
                rows.append(_added(f"{label}, msgq drop-in", times[0], times[1]))
                rows.append(_added(f"{label}, LiteLLM proxy", times[0], times[2]))
                rows.append([f"{label}, direct", samples, round(sorted(times[0])[samples // 2], 1)])
    return [r + ["-"] * (5 - len(r)) for r in rows]


async def _blast(url: str, key: str, n: int, in_flight: int) -> tuple[int, float]:
    """n creates, `in_flight` at a time, one aiohttp session: (succeeded, seconds)."""
    gate = asyncio.Semaphore(in_flight)
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    headers["content-type"] = "application/json"
    connector = aiohttp.TCPConnector(limit=in_flight)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int) -> bool:
            body = {**text_request(60), "messages": [{"role": "user", "content": f"call {i}"}]}
            async with (
                gate,
                session.post(
                    f"{url}/v1/messages", data=orjson.dumps(body), headers=headers
                ) as response,
            ):
                await response.read()
                return response.status == 200

        started = time.perf_counter()
        done = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
        return sum(1 for d in done if d is True), time.perf_counter() - started


async def throughput(env: Env, tmp: Path, n: int, in_flight: int) -> list[list[Any]]:
    rows: list[list[Any]] = []
    with simulator(*TOP_TIER, "--latency-ms", str(LATENCY_MS)) as sim:
        load = load_average()
        ok, seconds = await _blast(sim, KEY, n, in_flight)
        direct = ["direct (aiohttp, 1 session)", n, ok, round(n / seconds, 1), "1.00", "-", load]
        rows.append(direct)
        base = n / seconds
        max_jobs = {"MSGQ_MAX_JOBS": str(in_flight)}
        with (
            redis_server(tmp / "peers-dropin-rate") as redis,
            workers(1, redis.url, sim, **max_jobs) as procs,
            api(redis.url, sim) as msgq,
        ):
            await _blast(msgq, TENANT_KEY, 20, 20)  # warm: the limits are learned
            pids, load = [procs[0].pid, API_PIDS[-1]], load_average()
            cpu0 = sum(tree_cpu_s(p) for p in pids)
            ok, seconds = await _blast(msgq, TENANT_KEY, n, in_flight)
            cpu = (sum(tree_cpu_s(p) for p in pids) - cpu0) * 1000 / n
        rate = n / seconds
        label = "msgq drop-in (1 api + 1 worker)"
        rows.append([label, n, ok, round(rate, 1), f"{rate / base:.2f}", f"{cpu:.2f}", load])
        with proxy(env, sim, tmp) as lite:
            await _blast(lite, MASTER_KEY, 20, 20)
            pid, load = PROXY_PIDS[-1], load_average()
            cpu0 = tree_cpu_s(pid)
            ok, seconds = await _blast(lite, MASTER_KEY, n, in_flight)
            cpu = (tree_cpu_s(pid) - cpu0) * 1000 / n
        rate = n / seconds
        label = f"LiteLLM proxy ({env.versions})"
        rows.append([label, n, ok, round(rate, 1), f"{rate / base:.2f}", f"{cpu:.2f}", load])
    return rows
