"""Issue 22 with the official TypeScript SDK (`@anthropic-ai/sdk` from npm, Debian's node): a
2026-10-21 batch carrying temperature is refused naming it, the same under 2023-06-01 runs, and
the SDK's betas reach the API (the simulator's request log). Skipped without node unless
MSGQ_REQUIRE_NODE=1 (CI), like the drop-in test."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

from msgq.settings import Settings
from tests.conftest import KEY_A, Sim, StartWorker, eventually
from tests.test_dropin_node import NODE_DIR, TEXT, node_sdk


async def test_the_typescript_sdk_gets_the_version_rules_and_its_betas_through(
    api_server: str, settings: Settings, sim: Sim, start_worker: StartWorker
) -> None:
    node = node_sdk()
    await start_worker(settings)
    env = {
        **os.environ,
        "ANTHROPIC_BASE_URL": api_server,
        "ANTHROPIC_API_KEY": KEY_A,
        "MSGQ_REQUEST": json.dumps(TEXT),
    }
    process = await asyncio.create_subprocess_exec(
        node,
        str(NODE_DIR / "versions.mjs"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()[-2000:]
    seen = json.loads(out.decode().strip().splitlines()[-1])
    assert seen["refused"]["status"] == 400
    assert seen["refused"]["type"] == "invalid_request_error"
    assert "temperature" in seen["refused"]["message"]

    async def both_sent() -> bool:
        return len(sim.requests()) >= 2

    await eventually(both_sent, timeout_s=30)
    calls = sim.requests()
    warm = [c for c in calls if c["body"].get("temperature") == 0.5]
    assert [c["headers"]["anthropic-version"] for c in warm] == ["2023-06-01"]
    betas = [c for c in calls if "temperature" not in c["body"]]
    assert [c["betas"] for c in betas] == [["context-1m-2025-08-07"]]
    assert betas[0]["headers"]["anthropic-version"] == "2026-10-21"  # the SDK's default
