"""Hostile input, property-based: the validator and raw Redis jobs never crash or hang msgq.

`make chaos` (MSGQ_CHAOS=1) runs at least 10,000 cases of each; `make test` a few hundred.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import time
from typing import Any

import orjson
import pytest
import redis as redis_sync
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from redis.asyncio import Redis

from msgq.client import Client
from msgq.settings import Settings
from schemas import JobStatus, field_errors, validate_request
from tests.conftest import KEYS, StartWorker, eventually
from tests.images import image_bytes

CHAOS = os.environ.get("MSGQ_CHAOS") == "1"
CASES = 10_000 if CHAOS else 300
RAW_CASES = 10_000 if CHAOS else 150

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=50)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=30,
)
VALID = {
    "model": "claude-haiku-4-5",
    "max_tokens": 10,
    "messages": [{"role": "user", "content": "hi"}],
}
PNG = base64.b64encode(image_bytes("PNG", (8, 8))).decode()
JPEG = base64.b64encode(image_bytes("JPEG", (8, 8))).decode()
image_sources = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["base64", "url", "file", "bogus"]),
        "media_type": st.sampled_from(["image/png", "image/jpeg", "image/gif", "text/plain"]),
        "data": st.sampled_from([PNG, JPEG, "@@@", "", "AAAA", PNG[:-4], "\x00" * 8]),
    }
)
mutations = st.one_of(
    st.dictionaries(
        st.sampled_from(
            [
                "model",
                "max_tokens",
                "messages",
                "system",
                "temperature",
                "top_k",
                "tools",
                "thinking",
                "stream",
                "metadata",
            ]
        ),
        json_values,
        max_size=4,
    ),
    st.builds(
        lambda src, role: {
            "messages": [
                {
                    "role": role,
                    "content": [
                        {"type": "image", "source": src},
                        {"type": "text", "text": "x\x00y"},
                    ],
                }
            ]
        },
        image_sources,
        st.sampled_from(["user", "assistant", "robot"]),
    ),
)


def check_one(body: Any, version: str | None = None) -> None:
    errors: list[dict[str, str]] = []
    try:
        validate_request(body, anthropic_version=version)
    except ValidationError as exc:  # the only exception allowed out of the validator
        errors = field_errors(exc, body)
    assert all(e["msg"] and e["loc"] for e in errors)


@settings(max_examples=CASES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(json_values, mutations.map(lambda m: {**VALID, **m})))
def test_validator_accepts_or_refuses_cleanly(body: Any) -> None:
    """Any JSON in: either a valid request or a ValidationError with messages, nothing else."""
    check_one(body)


# Block types the schemas leave (or left) to the API, with any JSON where their fields go: the
# version rules read some of them (a search_result's content), so every version is tried.
OPAQUE_TYPES = [
    "search_result",
    "tool_reference",
    "server_tool_use",
    "web_search_tool_result",
    "web_fetch_tool_result",
    "code_execution_tool_result",
    "container_upload",
    "mid_conv_system",
]
opaque_blocks = st.builds(
    lambda kind, content, fields: {**fields, "type": kind, "content": content},
    st.sampled_from(OPAQUE_TYPES),
    json_scalars | json_values,
    st.dictionaries(
        st.sampled_from(["source", "title", "citations", "input", "id", "name"]),
        json_values,
        max_size=4,
    ),
)
opaque_bodies = st.builds(
    lambda block, role, wrap: {
        **VALID,
        "messages": [
            {
                "role": role,
                "content": [
                    {"type": "tool_result", "tool_use_id": "t", "content": [block]}
                    if wrap
                    else block
                ],
            }
        ],
    },
    opaque_blocks,
    st.sampled_from(["user", "assistant"]),
    st.booleans(),
)


@settings(max_examples=CASES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(opaque_bodies, st.sampled_from(["2026-10-21", "2023-06-01", None]))
def test_opaque_blocks_are_accepted_or_refused_cleanly(body: Any, version: str | None) -> None:
    """Blocks whose shape is the API's, with any JSON inside, under every version: valid or a
    ValidationError, never another exception (a search_result's `content` of 5 raised
    TypeError under 2026-10-21: a 500 on every route)."""
    check_one(body, version)


@pytest.mark.parametrize("content", [5, True, "text", {"a": 1}, [5], None])
def test_a_malformed_search_result_is_a_validation_error(content: Any) -> None:
    """A search_result whose content is not a list of text blocks is refused, naming it."""
    block = {"type": "search_result", "source": "s", "title": "t", "content": content}
    body = {**VALID, "messages": [{"role": "user", "content": [block]}]}
    with pytest.raises(ValidationError) as exc:
        validate_request(body, anthropic_version="2026-10-21")
    assert any(e["loc"].startswith("messages.0.content") for e in field_errors(exc.value, body))


def test_validator_survives_deep_nesting_and_huge_strings() -> None:
    """Pathological shapes are refused (or passed to the API), never a crash."""
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    check_one({**VALID, "metadata": {"user_id": deep}})
    check_one({**VALID, "messages": [{"role": "user", "content": "y" * 20_000_000}]})


payloads = st.one_of(
    st.binary(max_size=300),
    json_values.map(orjson.dumps),
    st.builds(
        lambda k: orjson.dumps({"t": 1, "f": "run_message", "a": [], "k": k, "et": 0}),
        st.dictionaries(
            st.sampled_from(["request", "metadata", "deadline", "max_attempts", "extra"]),
            json_values,
        ),
    ),
    st.builds(  # any try count and enqueue time, in range or not (9e15 ms is past year 9999)
        lambda t, et: orjson.dumps(
            {"t": t, "f": "run_message", "a": [], "k": {"request": VALID}, "et": et}
        ),
        st.one_of(st.integers(-(2**40), 2**40), st.floats(allow_nan=False, allow_infinity=False)),
        st.one_of(st.integers(-(2**60), 2**60), st.floats(allow_nan=False, allow_infinity=False)),
    ),
    mutations.map(
        lambda m: orjson.dumps(
            {"t": 1, "f": "run_message", "a": [], "k": {"request": {**VALID, **m}}, "et": 0}
        )
    ),
    st.sampled_from(
        [
            b"[" * 100_000,
            b'{"t":1,"f":"run_message","a":[],"k":{"request":"' + b"z" * 2_000_000 + b'"},"et":0}',
            b"\x80\x04\x95",
            b"\x00" * 64,
        ]
    ),
)


@pytest.mark.timeout(900 if CHAOS else 120)  # 10,000 hypothesis examples take minutes to write
async def test_raw_jobs_from_hostile_producers_all_end_recorded(
    redis: Redis, settings: Settings, client: Client, start_worker: StartWorker
) -> None:
    """Garbage, wrong types, deep nesting, bad base64, mislabelled images, NUL bytes written
    straight into Redis: the worker survives and every job ends as a stored record."""
    sync = redis_sync.Redis.from_url(settings.redis_url)
    ids: list[str] = []
    counter = itertools.count()

    @settings_for_raw
    @given(payloads)
    def enqueue(payload: bytes) -> None:
        job_id = f"fuzz-{next(counter)}"
        sync.set(KEYS.arq_job_key(job_id), payload)
        sync.zadd(settings.keys.for_job(job_id).queue, {job_id: time.time() * 1000})
        ids.append(job_id)

    await asyncio.to_thread(enqueue)
    sync.close()
    await start_worker(settings.model_copy(update={"max_jobs": 32}))

    async def all_recorded() -> bool:
        # Any ending counts: a hostile job can carry a valid deadline long past (`expired`).
        raws = await redis.mget([KEYS.record_key(i) for i in ids])
        return all(r and JobStatus(orjson.loads(r)["status"]).terminal for r in raws)

    await eventually(all_recorded, timeout_s=600)
    records = [orjson.loads(r) for r in await redis.mget([KEYS.record_key(i) for i in ids])]
    assert len(records) == len(ids) >= RAW_CASES // 2
    assert all(r["error"]["message"] for r in records if r["status"] == "failed")


settings_for_raw = settings(
    max_examples=RAW_CASES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
