"""What the drop-in costs a caller: the same request sent to the simulator directly and through
`POST /v1/messages` (one `msgq api`, one worker, an idle fleet), for `create` and for the time
to the first streamed text delta. Interleaved, so both see the same machine state.

`python -m bench.dropin` runs just this and prints the table.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.harness import KEY, process_cpu_s, redis_server, simulator, text_request, workers
from msgq.dev.embedded_redis import free_port
from msgq.dev.stack import msgq_command, wait_http

TENANT_KEY = "bench-key-0123456789"
HEADERS = {"anthropic-version": "2023-06-01", "content-type": "application/json"}


API_PIDS: list[int] = []  # the running `msgq api` processes, for their CPU time


@contextmanager
def api(redis_url: str, sim_url: str) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "ANTHROPIC_BASE_URL": sim_url,
        "ANTHROPIC_API_KEY": KEY,
        "MSGQ_API_KEYS": f"bench:{TENANT_KEY}",
        "MSGQ_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen(
        msgq_command("api", "--port", str(port)),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    API_PIDS.append(process.pid)
    try:
        wait_http(f"{url}/healthz", process=process)
        yield url
    finally:
        API_PIDS.remove(process.pid)
        process.terminate()
        process.wait(timeout=30)


async def create_ms(http: httpx.AsyncClient, url: str, key: str) -> float:
    started = time.perf_counter()
    response = await http.post(
        f"{url}/v1/messages", json=text_request(20), headers={**HEADERS, "x-api-key": key}
    )
    response.raise_for_status()
    return (time.perf_counter() - started) * 1000


async def first_delta_ms(http: httpx.AsyncClient, url: str, key: str) -> float:
    body = {**text_request(20), "stream": True}
    started = time.perf_counter()
    async with http.stream(
        "POST", f"{url}/v1/messages", json=body, headers={**HEADERS, "x-api-key": key}
    ) as response:
        response.raise_for_status()
        elapsed: float | None = None
        async for line in response.aiter_lines():  # to the end: the connection is reused
            if elapsed is None and line.startswith("data: ") and '"text_delta"' in line:
                elapsed = (time.perf_counter() - started) * 1000
    if elapsed is None:
        msg = "no text delta in the stream"
        raise RuntimeError(msg)
    return elapsed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * q) - 1)]


async def measure(tmp: Path, samples: int = 200) -> list[list[Any]]:
    with (
        simulator() as sim,
        redis_server(tmp / "dropin") as redis,
        workers(1, redis.url, sim),
        api(redis.url, sim) as msgq,
    ):
        async with httpx.AsyncClient(timeout=30) as http:
            rows = []
            for label, probe in (("create", create_ms), ("first text delta", first_delta_ms)):
                direct, dropin = await _pairs(http, probe, sim, msgq, samples)
                rows.append(_row(label, direct, dropin))
    return rows


async def _pairs(
    http: httpx.AsyncClient,
    probe: Callable[[httpx.AsyncClient, str, str], Any],
    sim: str,
    msgq: str,
    samples: int,
) -> tuple[list[float], list[float]]:
    for _ in range(10):  # warm both paths (connections, the model catalog, code paths)
        await probe(http, sim, KEY)
        await probe(http, msgq, TENANT_KEY)
    direct, dropin = [], []
    for _ in range(samples):
        direct.append(await probe(http, sim, KEY))
        dropin.append(await probe(http, msgq, TENANT_KEY))
    return direct, dropin


def _row(label: str, direct: list[float], dropin: list[float]) -> list[Any]:
    p50 = statistics.median(dropin) - statistics.median(direct)
    p99 = pct(dropin, 0.99) - pct(direct, 0.99)
    return [
        label,
        len(dropin),
        round(statistics.median(direct), 1),
        round(statistics.median(dropin), 1),
        round(p50, 1),
        round(p99, 1),
    ]


COLUMNS = ["call", "samples", "direct p50 ms", "drop-in p50 ms", "added p50 ms", "added p99 ms"]
TITLE = (
    "Drop-in added latency, idle fleet (1 worker, 1 msgq api, zero-latency simulator): "
    "drop-in minus direct, per percentile"
)


async def _one_stream(http: httpx.AsyncClient, url: str) -> bool:
    """One drop-in stream read to its end: True when it ended with message_stop."""
    body = {**text_request(100), "stream": True}
    async with http.stream(
        "POST", f"{url}/v1/messages", json=body, headers={**HEADERS, "x-api-key": TENANT_KEY}
    ) as response:
        if response.status_code != 200:
            return False
        return any(["event: message_stop" in line async for line in response.aiter_lines()])


async def many_streams(tmp: Path, streams: int = 200) -> list[Any]:
    """`streams` drop-in streams at once through one `msgq api` and one worker; each reply is
    100 tokens at 10 ms a token after 500 ms: every stream must end, and the API's CPU a call."""
    flags = ("--latency-ms", "500", "--ms-per-token", "10", "--output-tokens", "100")
    limits = httpx.Limits(max_connections=streams)
    with (
        simulator(*flags) as sim,
        redis_server(tmp / "dropin-many") as redis,
        workers(1, redis.url, sim),
        api(redis.url, sim) as msgq,
    ):
        pid = API_PIDS[-1]
        async with httpx.AsyncClient(timeout=120, limits=limits) as http:
            await _one_stream(http, msgq)  # warm: the model catalog, code paths
            cpu0, started = process_cpu_s(pid), time.perf_counter()
            ended = await asyncio.gather(
                *(_one_stream(http, msgq) for _ in range(streams)), return_exceptions=True
            )
            wall_s, cpu_ms = (
                time.perf_counter() - started,
                (process_cpu_s(pid) - cpu0) * 1000 / streams,
            )
    completed = sum(1 for e in ended if e is True)
    return [streams, completed, round(wall_s, 1), f"{cpu_ms:.2f}"]


async def report(tmp: Path, table: Callable[[str, list[str], list[list[Any]]], None]) -> None:
    table(TITLE, COLUMNS, await measure(tmp))
    table(
        "Drop-in streams at once: one msgq api, one worker; replies of 100 tokens at 10 ms a "
        "token after 500 ms",
        ["streams", "ended with message_stop", "wall s", "API CPU ms per stream"],
        [await many_streams(tmp)],
    )


if __name__ == "__main__":

    def show(title: str, columns: list[str], rows: list[list[Any]]) -> None:
        print(title)
        print(" | ".join(columns))
        for row in rows:
            print(" | ".join(str(x) for x in row))

    asyncio.run(report(Path(tempfile.mkdtemp(prefix="msgq-bench-")), show))
