"""Traces: each job continues its producer's trace, with GenAI-convention spans and metrics."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Tracer
from redis.asyncio import Redis

from msgq.client import Client
from msgq.settings import Settings
from msgq.trace_context import trace_fields, valid_traceparent
from schemas import JobStatus
from tests.conftest import KEYS, SAMPLES, TEST_API_KEY, Sim, StartWorker, eventually
from worker import tracing

TEXT = json.loads((SAMPLES / "requests" / "text.json").read_text())
MODEL = TEXT["model"]


@dataclass
class Traced:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    tracer: Tracer  # the producer's: an application tracing its own work

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name == name]

    def calls(self, job_id: str) -> list[ReadableSpan]:
        found = [
            s
            for s in self.named(f"chat {MODEL}")
            if s.attributes and s.attributes.get("msgq.job_id") == job_id
        ]
        return sorted(found, key=lambda s: s.start_time or 0)

    async def ended_calls(self, job_id: str, count: int = 1) -> list[ReadableSpan]:
        """The job's call spans once `count` have ended: a span ends just after the record it
        wrote is stored, so a poller can see the record first."""

        async def ended() -> bool:
            return len(self.calls(job_id)) >= count

        await eventually(ended, timeout_s=10)
        return self.calls(job_id)


@pytest.fixture(autouse=True)
def _no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def traced(settings: Settings) -> Iterator[Traced]:
    """The worker's spans and metrics into the SDK's in-memory exporter and reader."""
    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(settings, provider, MeterProvider(metric_readers=[reader]))
    yield Traced(exporter, reader, provider.get_tracer("producer"))
    tracing.shutdown()


def hex_trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


async def test_client_submit_joins_the_active_span_trace(
    client: Client, start_worker: StartWorker, traced: Traced
) -> None:
    """A job submitted inside a span: the queue span and the call span are its children."""
    await start_worker()
    with traced.tracer.start_as_current_span("producer") as producer:
        job = await client.submit(TEXT)
    record = await client.wait(job.id, timeout=20)
    assert record.status is JobStatus.SUCCEEDED
    context = producer.get_span_context()
    assert record.trace_id == f"{context.trace_id:032x}"
    (call,) = await traced.ended_calls(job.id)
    (queued,) = traced.named("msgq.queued")
    for span in (call, queued):
        assert span.context is not None and span.context.trace_id == context.trace_id
        assert span.parent is not None and span.parent.span_id == context.span_id
    assert queued.start_time is not None and call.start_time is not None
    assert queued.end_time is not None and queued.end_time <= call.start_time


async def test_http_traceparent_header_puts_the_job_in_that_trace(
    api: httpx.AsyncClient, client: Client, start_worker: StartWorker, traced: Traced
) -> None:
    """POST /v1/jobs with a W3C traceparent: the worker's call span is in that trace; a
    malformed header is ignored, never an error."""
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    await start_worker()
    answer = await api.post(
        "/v1/jobs",
        json={"request": TEXT},
        headers={"traceparent": f"00-{trace_id}-{parent_id}-01", "tracestate": "vendor=x"},
    )
    assert answer.status_code == 202 and answer.json()["trace_id"] == trace_id
    bad = await api.post("/v1/jobs", json={"request": TEXT}, headers={"traceparent": "00-zz"})
    assert bad.status_code == 202 and bad.json()["trace_id"] is None
    job_id = "tenant-a:" + answer.json()["id"]
    assert (await client.wait(job_id, timeout=20)).status is JobStatus.SUCCEEDED
    (call,) = await traced.ended_calls(job_id)
    assert hex_trace(call) == trace_id
    assert call.parent is not None and f"{call.parent.span_id:016x}" == parent_id
    assert call.context is not None and call.context.trace_state.get("vendor") == "x"


async def test_a_drop_in_call_joins_the_callers_trace(
    api: httpx.AsyncClient, client: Client, start_worker: StartWorker, traced: Traced
) -> None:
    """POST /v1/messages (the drop-in) with a traceparent: the worker's call span is a child
    of the caller's span, as for POST /v1/jobs."""
    trace_id, parent_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    await start_worker()
    answer = await api.post(
        "/v1/messages", json=TEXT, headers={"traceparent": f"00-{trace_id}-{parent_id}-01"}
    )
    assert answer.status_code == 200, answer.text
    job_id = "tenant-a:" + answer.headers["msgq-job-id"]
    (call,) = await traced.ended_calls(job_id)
    assert hex_trace(call) == trace_id
    assert call.parent is not None and f"{call.parent.span_id:016x}" == parent_id


async def test_raw_payload_trace_fields_are_continued(
    redis: Redis, settings: Settings, client: Client, start_worker: StartWorker, traced: Traced
) -> None:
    """A raw producer writes `traceparent` into the job's kwargs (`k`), as the README shows."""
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    kwargs = {"request": TEXT, "traceparent": f"00-{trace_id}-b7ad6b7169203331-01"}
    payload = {"t": 1, "f": "run_message", "a": [], "k": kwargs, "et": int(time.time() * 1000)}
    await redis.set(KEYS.arq_job_key("raw-traced"), json.dumps(payload))
    await redis.zadd(
        settings.keys.for_job("raw-traced").queue, {"raw-traced": int(time.time() * 1000)}
    )
    await start_worker()

    async def exists() -> bool:
        return bool(await redis.exists(KEYS.record_key("raw-traced")))

    await eventually(exists)
    record = await client.wait("raw-traced", timeout=20)
    assert record.status is JobStatus.SUCCEEDED and record.trace_id == trace_id
    (call,) = await traced.ended_calls("raw-traced")
    assert hex_trace(call) == trace_id


def cached_request() -> dict[str, Any]:
    """A system prompt long enough to be cached, so usage has cache writes."""
    system = [{"type": "text", "text": "rules " * 6000, "cache_control": {"type": "ephemeral"}}]
    return TEXT | {"system": system, "temperature": 0.5, "stop_sequences": ["END"]}


async def test_call_span_and_metrics_follow_the_genai_conventions(
    client: Client, start_worker: StartWorker, traced: Traced
) -> None:
    """`chat {model}`, CLIENT, gen_ai.* request/response/usage (input counting the cache
    writes), msgq's own attributes; no content and no key unless opted in; both metrics."""
    await start_worker()
    job = await client.submit(cached_request(), tenant="acme", priority="interactive")
    record = await client.wait(job.id, timeout=20)
    assert record.status is JobStatus.SUCCEEDED and record.usage and record.result
    usage = record.usage
    assert usage.cache_creation_input_tokens > 0
    (call,) = await traced.ended_calls(job.id)
    attrs = dict(call.attributes or {})
    assert call.kind is SpanKind.CLIENT
    assert (
        attrs
        | {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "anthropic",
            "gen_ai.request.model": MODEL,
            "gen_ai.request.max_tokens": TEXT["max_tokens"],
            "gen_ai.request.temperature": 0.5,
            "gen_ai.request.stop_sequences": ("END",),
            "gen_ai.response.id": record.result["id"],
            "gen_ai.response.model": record.result["model"],
            "gen_ai.response.finish_reasons": (record.result["stop_reason"],),
            "gen_ai.usage.input_tokens": usage.input_tokens
            + usage.cache_creation_input_tokens
            + usage.cache_read_input_tokens,
            "gen_ai.usage.output_tokens": usage.output_tokens,
            "gen_ai.usage.cache_creation.input_tokens": usage.cache_creation_input_tokens,
            "gen_ai.usage.cache_read.input_tokens": usage.cache_read_input_tokens,
            "msgq.job_id": job.id,
            "msgq.tenant": "acme",
            "msgq.priority": "interactive",
            "msgq.lane": "realtime",
            "msgq.attempt": 1,
            "server.address": "127.0.0.1",
        }
        == attrs
    )
    assert not any(k.startswith(("gen_ai.input", "gen_ai.output", "gen_ai.system")) for k in attrs)
    assert TEST_API_KEY not in repr(attrs)
    names = {
        m.name: m
        for rm in traced.metrics.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    tokens = names["gen_ai.client.token.usage"].data.data_points
    assert {p.attributes["gen_ai.token.type"]: p.sum for p in tokens} == {
        "input": attrs["gen_ai.usage.input_tokens"],
        "output": usage.output_tokens,
    }
    (duration,) = names["gen_ai.client.operation.duration"].data.data_points
    assert duration.count == 1 and duration.attributes["gen_ai.request.model"] == MODEL


async def test_content_is_recorded_only_when_opted_in(
    client: Client, start_worker: StartWorker, traced: Traced, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=span_only adds the messages."""
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "span_only")
    await start_worker()
    job = await client.submit(TEXT)
    record = await client.wait(job.id, timeout=20)
    (call,) = await traced.ended_calls(job.id)
    attrs = dict(call.attributes or {})
    sent = json.loads(str(attrs["gen_ai.input.messages"]))
    assert sent == [
        {"role": "user", "parts": [{"type": "text", "content": TEXT["messages"][0]["content"]}]}
    ]
    (answer,) = json.loads(str(attrs["gen_ai.output.messages"]))
    assert record.result and answer["parts"][0]["content"] == record.result["content"][0]["text"]


async def test_retried_job_shows_each_attempt(
    client: Client, sim: Sim, start_worker: StartWorker, traced: Traced
) -> None:
    """A 429 then success: two call spans in the producer's trace, the first with its
    error.type and a retry event, the second attempt 2."""
    sim.script({"status": 429, "headers": {"retry-after": "0"}})
    await start_worker()
    with traced.tracer.start_as_current_span("producer") as producer:
        job = await client.submit(TEXT)
    record = await client.wait(job.id, timeout=20)
    assert record.status is JobStatus.SUCCEEDED and record.attempts == 2
    first, second = await traced.ended_calls(job.id, 2)
    trace_id = producer.get_span_context().trace_id
    assert first.context and second.context
    assert first.context.trace_id == second.context.trace_id == trace_id
    assert first.attributes and second.attributes
    assert (first.attributes["msgq.attempt"], second.attributes["msgq.attempt"]) == (1, 2)
    assert first.attributes["error.type"] == "rate_limit_error"
    assert not first.status.is_ok and "error.type" not in second.attributes
    (event,) = first.events
    assert event.name == "msgq.retry_scheduled" and event.attributes
    assert event.attributes["msgq.attempt"] == 1


async def test_late_retry_starts_a_trace_linked_to_the_producer(
    client: Client,
    sim: Sim,
    start_worker: StartWorker,
    traced: Traced,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A retry long after submit (here: any) is a new trace's root, linked, not a child."""
    monkeypatch.setattr(tracing, "LINK_AFTER_S", 0.0)
    sim.script({"status": 529})
    await start_worker()
    with traced.tracer.start_as_current_span("producer") as producer:
        job = await client.submit(TEXT)
    assert (await client.wait(job.id, timeout=20)).status is JobStatus.SUCCEEDED
    first, second = await traced.ended_calls(job.id, 2)
    context = producer.get_span_context()
    assert first.context and second.context
    assert first.context.trace_id == context.trace_id != second.context.trace_id
    assert second.parent is None
    (link,) = second.links
    assert link.context.span_id == context.span_id


def test_tracing_is_off_without_otel_variables(settings: Settings) -> None:
    """No OTEL_* configuration: configure() declines and the hooks hand out the no-op span."""
    assert tracing.configure(settings) is False
    assert tracing.enabled_by_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"})
    assert not tracing.enabled_by_env({"OTEL_TRACES_EXPORTER": "none"})
    assert not tracing.enabled_by_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_SDK_DISABLED": "true"}
    )


def test_traceparent_checks() -> None:
    """Malformed, all-zero or version-ff traceparents are dropped; no span, no fields."""
    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert valid_traceparent(good.upper()) == good
    for bad in ("", "00-xyz", f"ff{good[2:]}", "00-" + "0" * 32 + "-00f067aa0ba902b7-01"):
        assert valid_traceparent(bad) is None
    assert trace_fields(None, None) == {}
    assert trace_fields(good, "a=1") == {"traceparent": good, "tracestate": "a=1"}
