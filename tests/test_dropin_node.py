"""The official TypeScript SDK (`@anthropic-ai/sdk`, tests/node/package.json) pointed at msgq:
create and stream, unchanged but for its base URL and key.

The SDK is installed into tests/node/node_modules (git-ignored) by the first run. Without node
or npm the test skips with one line; with MSGQ_REQUIRE_NODE=1 (set by .ci/run) that is a
failure instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from anthropic.types import Message

from msgq.jobs.store import JobStore
from tests.conftest import KEY_A, SAMPLES, Sim, StartWorker
from tests.test_dropin_sdk import ended

REQUIRED = os.environ.get("MSGQ_REQUIRE_NODE") == "1"  # read at import: fixtures clear MSGQ_*
NODE_DIR = Path(__file__).parent / "node"
TEXT: dict[str, Any] = json.loads((SAMPLES / "requests" / "text.json").read_text())


def node_sdk() -> str:
    """The node binary, with the SDK installed (npm ci, once); skip or fail without them."""
    node, npm = shutil.which("node"), shutil.which("npm")
    reason = None if node and npm else "no node/npm: apt-get install nodejs npm"
    if reason is None and not (NODE_DIR / "node_modules" / "@anthropic-ai" / "sdk").exists():
        assert npm is not None
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            reason = f"npm ci failed: {done.stderr.strip()[-300:]}"
    if reason is not None:
        if REQUIRED:
            pytest.fail(f"the TypeScript SDK test is required (MSGQ_REQUIRE_NODE=1): {reason}")
        pytest.skip(reason)
    assert node is not None
    return node


async def test_the_typescript_sdk_creates_and_streams(
    api_server: str, store: JobStore, sim: Sim, start_worker: StartWorker
) -> None:
    """create: the stored Message and its request ID; stream: finalMessage() is the record."""
    node = node_sdk()
    sim.script({}, {"output_tokens": 40, "ms_per_token": 2})
    await start_worker()
    env = {
        **os.environ,
        "ANTHROPIC_BASE_URL": api_server,
        "ANTHROPIC_API_KEY": KEY_A,
        "MSGQ_REQUEST": json.dumps(TEXT),
    }
    # Asynchronously: the API under test is served by this event loop.
    process = await asyncio.create_subprocess_exec(
        node, str(NODE_DIR / "dropin.mjs"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()[-2000:]
    seen = json.loads(out.decode().strip().splitlines()[-1])
    created = await ended(store, seen["createdJob"])
    streamed = await ended(store, seen["streamedJob"])
    assert seen["created"] == created.result
    assert seen["requestId"] == created.upstream_request_id is not None
    assert streamed.result is not None and streamed.attempts == 1
    # The SDK's structured-output helper adds `parsed_output` (null here); not a wire field.
    assert seen["streamed"].pop("parsed_output") is None
    final = Message.model_validate(seen["streamed"]).model_dump()
    assert final == Message.model_validate(streamed.result).model_dump()
    assert seen["streamedText"] == streamed.result["content"][0]["text"]
