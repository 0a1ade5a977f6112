"""Streaming (issue 12): the worker streams every call, assembles the Message, survives long
generations, retries mid-stream faults, and lets callers watch the text as it comes."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import anthropic
import click
import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse

from msgq.client import Client
from msgq.dev.simulator.events import message_events
from msgq.dev.stack import msgq_command
from msgq.errors import OverloadedError, RateLimitError, RejectedError, UnavailableError
from msgq.settings import Settings
from schemas import JobStatus
from tests.conftest import KEY_A, KEY_B, TEST_API_KEY, Sim, StartWorker, eventually, worker_env
from worker.upstream.classify import classify_error_event
from worker.upstream.streaming import MessageAssembler, MidStreamError

BODY: dict[str, Any] = {
    "model": "claude-haiku-4-5",
    "max_tokens": 30_000,
    "messages": [{"role": "user", "content": "Write at length."}],
}
RICH: dict[str, Any] = {
    "id": "msg_rich01",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5",
    "content": [
        {"type": "thinking", "thinking": "Let me think. " * 9, "signature": "c2lnbmF0dXJl"},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
        {
            "type": "text",
            "text": "The grass is green.",
            "citations": [
                {
                    "type": "char_location",
                    "cited_text": "The grass is green.",
                    "document_index": 0,
                    "document_title": "Notes",
                    "start_char_index": 0,
                    "end_char_index": 19,
                }
            ],
        },
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"q": "x"}},
        {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
        {
            "type": "tool_use",
            "id": "toolu_1",
            "name": "lookup",
            "input": {"city": "Paris", "days": [1, 2], "opts": {"units": "metric" * 8}},
        },
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 120,
        "output_tokens": 75,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 40,
        "service_tier": "standard",
    },
}


def assemble(events: list[tuple[str, dict[str, Any]]]) -> MessageAssembler:
    assembler = MessageAssembler()
    for name, data in events:
        assembler.feed(name, orjson.loads(orjson.dumps(data)))
    return assembler


def test_assembler_rebuilds_every_block_kind() -> None:
    """Text with citations, thinking with its signature, redacted thinking, tool and server
    tool input from input_json_delta, whole server results and unknown blocks: all come back."""
    message = {**RICH, "content": [*RICH["content"], {"type": "novel_block", "x": [1]}]}
    assembler = assemble([(name, data) for name, data, _ in message_events(message)])
    assert assembler.done
    assert assembler.message() == message
    assert assembler.output_tokens == 75


def test_usage_from_start_overridden_by_delta_and_unknown_deltas_kept() -> None:
    """message_delta's usage overrides message_start's field by field; unknown delta kinds
    are merged into their block, and text deltas are returned for watchers."""
    start = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": 3},
    }
    assembler = MessageAssembler()
    assert assembler.feed("message_start", {"type": "message_start", "message": start}) == ""
    assembler.feed("ping", {"type": "ping"})
    block = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assembler.feed("content_block_start", block)
    text = {"type": "text_delta", "text": "Hello"}
    delta = {"type": "content_block_delta", "index": 0, "delta": text}
    assert assembler.feed("content_block_delta", delta) == "Hello"
    odd = {"type": "sparkle_delta", "sparkle": "*", "marks": [1]}
    assembler.feed("content_block_delta", {**delta, "delta": odd})
    assembler.feed("content_block_delta", {**delta, "delta": {**odd, "marks": [2]}})
    assembler.feed("content_block_stop", {"type": "content_block_stop", "index": 0})
    assembler.feed("future_event", {"type": "future_event"})
    final = {"input_tokens": 10, "output_tokens": 42, "cache_read_input_tokens": None}
    end = {"stop_reason": "stop_sequence", "stop_sequence": "##"}
    assembler.feed("message_delta", {"type": "message_delta", "delta": end, "usage": final})
    assembler.feed("message_stop", {"type": "message_stop"})
    message = assembler.message()
    assert message["content"] == [
        {"type": "text", "text": "Hello", "sparkle": "**", "marks": [1, 2]}
    ]
    assert message["stop_reason"] == "stop_sequence" and message["stop_sequence"] == "##"
    assert message["usage"] == {
        "input_tokens": 10,
        "output_tokens": 42,
        "cache_read_input_tokens": 3,
    }


@pytest.mark.parametrize(
    ("error_type", "cls", "status", "retryable"),
    [
        ("overloaded_error", OverloadedError, 529, True),
        ("api_error", UnavailableError, 500, True),
        ("rate_limit_error", RateLimitError, 429, True),
        ("invalid_request_error", RejectedError, 400, False),
        ("brand_new_error", UnavailableError, 500, True),
    ],
)
def test_error_events_are_classified_as_their_status(
    error_type: str, cls: type[Exception], status: int, retryable: bool
) -> None:
    """An `error` event after a 200 means what the matching HTTP status would."""
    with pytest.raises(MidStreamError) as info:
        MessageAssembler().feed("error", {"type": "error", "error": {"type": error_type}})
    error = classify_error_event({"request-id": "req_1"}, info.value.error)
    assert type(error) is cls and error.status_code == status
    assert error.retryable is retryable and error.request_id == "req_1"


async def test_long_generation_outlives_the_request_timeout_in_one_attempt(
    settings: Settings, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """max_tokens 30,000, 6,000 tokens at 2 ms each (12 s), against a 1 s request timeout and
    a 2 s idle timeout: one attempt, one call, and `progress` moves while it runs."""
    sim.script({"output_tokens": 6000, "ms_per_token": 2})
    custom = settings.model_copy(update={"request_timeout_s": 1.0, "stream_idle_timeout_s": 2.0})
    await start_worker(custom)
    started = time.monotonic()
    job = await client.submit(BODY)
    seen: list[int] = []

    async def progressed_twice() -> bool:
        progress = (await client.get(job.id)).progress
        if progress and progress not in seen:
            seen.append(progress)
        return len(seen) >= 2

    await eventually(progressed_twice, timeout_s=10)
    record = await client.wait(job.id, timeout=60)
    assert time.monotonic() - started > 10 > 1.0  # far beyond the request timeout
    assert record.status is JobStatus.SUCCEEDED, record.error
    assert record.attempts == 1 and sim.received == 1
    assert record.usage is not None and record.usage.output_tokens == 6000
    assert record.result is not None and record.result["stop_reason"] == "end_turn"
    assert record.result == sim.requests()[0]["response"]
    assert 0 < seen[0] < seen[1] < 6000 and record.progress is None


async def test_sdk_stream_gives_the_message_msgq_stores(
    settings: Settings, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """The official SDK's stream(...).get_final_message() and msgq's stored Message agree,
    field by field: every block kind, and the simulator's own long replies."""
    request = {**BODY, "max_tokens": 500}
    sim.script({"body": RICH}, {"body": RICH}, {"output_tokens": 300}, {"output_tokens": 300})
    await start_worker(settings.model_copy(update={"stream_min_max_tokens": 0}))
    async with anthropic.AsyncAnthropic(
        base_url=sim.url, api_key=TEST_API_KEY, max_retries=0
    ) as sdk:
        for exclude in ((), ("id",)):  # generated replies get ids from their request ids
            record = await client.wait((await client.submit(request)).id, timeout=20)
            async with sdk.messages.stream(**request) as stream:
                final = (await stream.get_final_message()).to_dict()
            stored = record.result
            assert stored is not None and stored["type"] == "message"
            for field in (set(final) | set(stored)) - set(exclude):
                assert final.get(field) == stored.get(field), field  # absent == None
    assert sim.received == 4


@pytest.mark.parametrize(
    "fault",
    [{"stream_error": "overloaded_error"}, {"stream_cut": True}, {"stream_stall_s": 30}],
    ids=["error-event", "cut", "stall"],
)
async def test_mid_stream_fault_is_retried_and_succeeds(
    fault: dict[str, Any], settings: Settings, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """An overloaded_error event, a cut connection and a stall (past the idle timeout) mid-
    stream are retryable: the job succeeds on the second call, well before the stall ends."""
    sim.script({**fault, "output_tokens": 400, "ms_per_token": 1})
    await start_worker(settings.model_copy(update={"stream_idle_timeout_s": 0.5}))
    started = time.monotonic()
    record = await client.wait((await client.submit(BODY)).id, timeout=20)
    assert record.status is JobStatus.SUCCEEDED, record.error
    assert record.attempts == 2 and sim.received == 2
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    ("error_type", "status", "retryable"),
    [("overloaded_error", 529, True), ("api_error", 500, True), ("permission_error", 403, False)],
)
async def test_mid_stream_error_is_recorded_as_its_status(
    error_type: str,
    status: int,
    retryable: bool,
    client: Client,
    sim: Sim,
    start_worker: StartWorker,
) -> None:
    """With no attempts left, the record shows the error event's type and matching status."""
    sim.script({"stream_error": error_type, "output_tokens": 50})
    await start_worker()
    record = await client.wait((await client.submit(BODY, max_attempts=1)).id, timeout=20)
    assert record.status is JobStatus.FAILED and record.error is not None
    assert record.error.type == error_type and record.error.status_code == status
    assert record.error.retryable is retryable
    assert record.error.request_id == sim.requests()[0]["request_id"]


async def test_deadline_bounds_a_long_stream(
    client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """A stream still going at the job's deadline is stopped there: `expired`, not 12 s later."""
    sim.script({"output_tokens": 6000, "ms_per_token": 2})
    await start_worker()
    deadline = datetime.now(UTC) + timedelta(seconds=2)
    record = await client.wait((await client.submit(BODY, deadline=deadline)).id, timeout=20)
    assert record.status is JobStatus.EXPIRED
    assert record.finished_at is not None and record.finished_at < deadline + timedelta(seconds=2)


async def test_output_reservation_follows_the_stream(
    settings: Settings, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """With an OTPM cap of 40,000, a streaming job with max_tokens 30,000 gives back what it
    has not produced, so a second such job starts at once instead of waiting ~30 s."""
    sim.script(*[{"output_tokens": 3000, "ms_per_token": 2}] * 2)
    limits = {"haiku": {"otpm": 40_000}}
    await start_worker(settings.model_copy(update={"rate_limits": limits}))
    first = await client.submit(BODY)

    async def progressing() -> bool:
        return bool((await client.get(first.id)).progress)

    await eventually(progressing)
    second = await client.submit(BODY)

    async def both_sent() -> bool:
        return sim.received == 2

    await eventually(both_sent, timeout_s=4)
    assert not (await client.get(first.id)).status.terminal  # started while the first streams
    for job in (first, second):
        assert (await client.wait(job.id, timeout=30)).status is JobStatus.SUCCEEDED


async def test_sse_client_sees_deltas_before_the_job_ends(
    api_server: str, sim: Sim, start_worker: StartWorker
) -> None:
    """GET /v1/jobs/{id}/events: the state first, text deltas while it generates, then the
    terminal status, and the stream closes. Another tenant gets 404."""
    sim.script({"output_tokens": 1500, "ms_per_token": 2})
    await start_worker()
    async with httpx.AsyncClient(base_url=api_server, headers={"x-api-key": KEY_A}) as http:
        asks_stream = {"request": {**BODY, "stream": True}, "id": "watched"}  # no longer refused
        created = await http.post("/v1/jobs", json=asks_stream)
        assert created.status_code == 202, created.text
        job = created.json()
        other = await http.get("/v1/jobs/watched/events", headers={"x-api-key": KEY_B})
        assert other.status_code == 404
        events: list[tuple[str, dict[str, Any]]] = []
        async with aconnect_sse(http, "GET", f"/v1/jobs/{job['id']}/events") as source:
            assert source.response.status_code == 200
            async for sse in source.aiter_sse():
                events.append((sse.event, sse.json()))
    kinds = [name for name, _ in events]
    assert kinds[0] == "status" and kinds[-1] == "status" and "delta" in kinds
    assert events[-1][1]["status"] == "succeeded" and events[-1][1]["id"] == "watched"
    deltas = [data for name, data in events if name == "delta"]
    assert kinds.index("delta") < len(kinds) - 1  # text came before the end
    assert any(data["status"] == "in_progress" for name, data in events[:-1] if name == "status")
    text = events[-1][1]["result"]["content"][0]["text"]
    start = deltas[0]["offset"]
    assert (
        "".join(d["text"] for d in deltas)
        == text[start : start + sum(len(d["text"]) for d in deltas)]
    )
    assert len(deltas) > 2  # several deltas, not one blob at the end


async def test_status_follow_prints_text_incrementally(
    settings: Settings, client: Client, sim: Sim, start_worker: StartWorker
) -> None:
    """`msgq status ID --follow` prints text while the job is still running (from where it
    joined, like tail -f, each character once, up to the very end), then the record as JSON."""
    sim.script({"output_tokens": 2500, "ms_per_token": 2})
    await start_worker()
    job = await client.submit(BODY)
    process = await asyncio.create_subprocess_exec(
        *msgq_command("status", job.id, "--follow"),
        env=worker_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    first = await asyncio.wait_for(process.stdout.read(64), timeout=20)
    running = (await client.get(job.id)).status
    rest, errors = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, errors.decode()
    assert running is JobStatus.IN_PROGRESS and first  # text arrived before the job ended
    output = (first + rest).decode()
    text, _, record = output.partition("{")
    stored = await client.get(job.id)
    assert stored.result is not None
    answer = stored.result["content"][0]["text"]
    assert text.endswith("\n") and answer.endswith(text[:-1])  # from where it joined, once
    assert orjson.loads("{" + record)["status"] == "succeeded"


async def test_simulator_flags_long_replies_and_stream_faults() -> None:
    """`--output-tokens` and `--stream-fault` (as SimConfig): a plain reply is min(N,
    max_tokens) tokens with the right stop_reason; a streamed one gets its error event."""
    from aiohttp import web

    from msgq.dev.embedded_redis import free_port
    from msgq.dev.simulator.app import build_app
    from msgq.dev.simulator.state import SimConfig, parse_stream_faults

    faults = parse_stream_faults(("error=1",))
    with pytest.raises(click.BadParameter):
        parse_stream_faults(("melt=0.5",))
    runner = web.AppRunner(build_app(SimConfig(output_tokens=120, stream_faults=faults)))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    headers = {"x-api-key": TEST_API_KEY, "anthropic-version": "2023-06-01"}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers) as http:
            short = (await http.post("/v1/messages", json={**BODY, "max_tokens": 50})).json()
            long = (await http.post("/v1/messages", json={**BODY, "max_tokens": 500})).json()
            async with aconnect_sse(
                http, "POST", "/v1/messages", json={**BODY, "stream": True}
            ) as source:
                names = [sse.event async for sse in source.aiter_sse()]
    finally:
        await runner.cleanup()
    assert (short["usage"]["output_tokens"], short["stop_reason"]) == (50, "max_tokens")
    assert (long["usage"]["output_tokens"], long["stop_reason"]) == (120, "end_turn")
    assert names[:2] == ["message_start", "ping"] and names[-1] == "error"
    assert "content_block_delta" in names and "message_stop" not in names
