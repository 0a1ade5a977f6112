"""What users would otherwise write: asyncio + the official SDK, a semaphore, default retries."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anthropic


async def sdk_semaphore_run(
    base_url: str, key: str, requests: list[dict[str, Any]], *, concurrency: int = 50
) -> tuple[float, int]:
    """Returns (seconds, requests lost after the SDK's own retries)."""
    gate = asyncio.Semaphore(concurrency)
    lost = 0

    async def one(sdk: anthropic.AsyncAnthropic, body: dict[str, Any]) -> None:
        nonlocal lost
        async with gate:
            try:
                await sdk.messages.create(**body)
            except anthropic.APIError:
                lost += 1

    started = time.perf_counter()
    async with anthropic.AsyncAnthropic(base_url=base_url, api_key=key) as sdk:
        await asyncio.gather(*(one(sdk, body) for body in requests))
    return time.perf_counter() - started, lost


async def raw_httpx_run(
    base_url: str,
    key: str,
    requests: list[dict[str, Any]],
    *,
    concurrency: int,
    clients: int = 1,
) -> float:
    """The ceiling: a bare httpx loop at a fixed concurrency, no queue at all. `clients` > 1
    spreads the calls over that many clients in turn, as msgq's worker does (httpcore's pool
    costs more per call the more calls it holds)."""
    import httpx

    gate = asyncio.Semaphore(concurrency)
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    limits = httpx.Limits(max_connections=concurrency)
    pool = [
        httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=60)
        for _ in range(clients)
    ]

    async def one(i: int, body: dict[str, Any]) -> None:
        async with gate:
            (await pool[i % clients].post("/v1/messages", json=body)).raise_for_status()

    started = time.perf_counter()
    try:
        await asyncio.gather(*(one(i, body) for i, body in enumerate(requests)))
    finally:
        for http in pool:
            await http.aclose()
    return time.perf_counter() - started
