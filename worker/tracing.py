"""Spans and GenAI metrics for jobs through the OpenTelemetry SDK, and nothing at all when off.

Per job, in the producer's trace (the `traceparent` the job carries): a `msgq.queued` span for
its time in the queue (submit → first attempt, or → pooled for the batch lane), then one CLIENT
span `chat {model}` per API call (worker/genai.py has the attributes). A retry that starts more
than LINK_AFTER_S after submit begins a new trace linked to the producer's span instead, so a
trace does not stay open for hours. An upstream Message Batch gets one span of its own, linked
both ways with its members' `chat` spans.

Off unless the standard OTEL_* variables ask for it (an OTLP endpoint, or OTEL_TRACES_EXPORTER),
the SDK is installed (`msgq[otel]`), and OTEL_SDK_DISABLED is not true. Off, `_otel` is None and
every hook returns at its first line: no span objects, no attribute dicts.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

import structlog

from msgq.arq_format import deferred_s
from msgq.settings import Settings
from msgq.trace_context import valid_traceparent, valid_tracestate
from schemas import JobRecord, MessageRequest
from worker import genai

try:  # the `otel` extra; without it tracing stays off
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - installs without the otel extra
    trace = None  # type: ignore[assignment]  # the guarded import's fallback

if TYPE_CHECKING:
    from opentelemetry.metrics import Histogram, MeterProvider
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from msgq.lanes import UpstreamBatch
    from worker.upstream.client import UpstreamReply

log = structlog.get_logger("msgq.trace_context")
LINK_AFTER_S = 300.0  # a retry later than this after submit starts a linked trace


@dataclass
class _Otel:
    tracer: Tracer
    tokens: Histogram
    duration: Histogram
    server: dict[str, Any]
    owned: list[Any] = field(default_factory=list)  # providers this module set up, to flush


_otel: _Otel | None = None
# The upstream batch whose results the lane's poller is storing (not a job's state): the spans of
# its members, written inside `upstream_batch`, link to it.
_batch: ContextVar[tuple[Span, int] | None] = ContextVar("msgq_upstream_batch", default=None)


def enabled_by_env(env: Mapping[str, str]) -> bool:
    """Whether the OTEL_* variables ask for traces (the SDK alone exports nothing by default)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure(settings: Settings) -> bool:
    """Set up the SDK from the environment with its own configurator (the one
    `opentelemetry-instrument` runs), once per process. True when tracing is on."""
    if _otel is not None:
        return True
    if trace is None or not enabled_by_env(os.environ):
        return False
    try:
        from opentelemetry.sdk._configuration import _OTelSDKConfigurator
    except ImportError:
        log.warning("tracing.unavailable", reason="OTEL_* set but msgq[otel] is not installed")
        return False
    # The SDK's own defaults are "no exporter" and gRPC; the extra ships the OTLP/HTTP exporter.
    if not os.environ.get("OTEL_TRACES_EXPORTER"):
        os.environ["OTEL_TRACES_EXPORTER"] = "otlp"
        os.environ.setdefault("OTEL_METRICS_EXPORTER", "otlp")
    os.environ.setdefault("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    os.environ.setdefault("OTEL_SERVICE_NAME", "msgq-worker")
    _OTelSDKConfigurator().configure()  # type: ignore[no-untyped-call]  # untyped in the SDK
    use(settings, trace.get_tracer_provider(), otel_metrics.get_meter_provider(), owned=True)
    log.info("tracing.enabled", service=os.environ["OTEL_SERVICE_NAME"])
    return True


def use(
    settings: Settings,
    tracer_provider: TracerProvider,
    meter_provider: MeterProvider,
    *,
    owned: bool = False,
) -> None:
    """Trace through these providers (tests, or an application that embeds the worker)."""
    global _otel
    meter = meter_provider.get_meter("msgq")
    _otel = _Otel(
        tracer=tracer_provider.get_tracer("msgq"),
        tokens=meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=genai.TOKEN_BUCKETS,
        ),
        duration=meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=genai.DURATION_BUCKETS_S,
        ),
        server=genai.server_attributes(settings.anthropic_base_url),
        owned=[tracer_provider, meter_provider] if owned else [],
    )


def shutdown() -> None:
    """Flush what is buffered (worker shutdown); tracing is off afterwards."""
    global _otel
    state, _otel = _otel, None
    for provider in state.owned if state else []:
        with contextlib.suppress(Exception):  # an unreachable collector must not block exit
            provider.shutdown()


def _ns(at: datetime) -> int:
    return int(at.replace(tzinfo=at.tzinfo or UTC).timestamp() * 1e9)


def _parent(traceparent: str | None, tracestate: str | None) -> Context | None:
    """The producer's span as a context to start children in; None without (or invalid)."""
    checked = valid_traceparent(traceparent)
    if checked is None:
        return None
    carrier = {"traceparent": checked}
    if state := valid_tracestate(tracestate):
        carrier["tracestate"] = state
    return TraceContextTextMapPropagator().extract(carrier)


def queued(record: JobRecord, *, until: datetime | None = None) -> None:
    """The job's time in the queue: from submit to its first attempt (or to the pool)."""
    if _otel is None:
        return
    end = until or record.started_at or datetime.now(UTC)
    span = _otel.tracer.start_span(
        "msgq.queued",
        context=_parent(record.traceparent, None),
        attributes=genai.job_attributes(record),
        start_time=_ns(record.created_at),
    )
    span.end(end_time=_ns(end))


class _NoSpan:
    """What the hooks hand out with tracing off: every method does nothing."""

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def succeeded(self, reply: UpstreamReply) -> None:
        return None

    def failed(self, error_type: str, message: str) -> None:
        return None


NO_SPAN = _NoSpan()


class CallSpan:
    """`with call_span(...) as span:` around one API call; `succeeded` or `failed` inside."""

    def __init__(
        self,
        otel: _Otel,
        record: JobRecord,
        request: MessageRequest,
        body: dict[str, Any],
        *,
        stream: bool,
        parent: tuple[str | None, str | None],
    ) -> None:
        self.otel = otel
        self.attrs = genai.request_attributes(request, stream=stream) | otel.server
        self.attrs |= genai.job_attributes(record)
        if genai.capture_content():
            self.attrs |= genai.input_content(body)
        context, links = _parent(*parent), []
        waited_s = (datetime.now(UTC) - record.created_at).total_seconds()
        if context is not None and record.attempts > 1 and waited_s > LINK_AFTER_S:
            producer = trace.get_current_span(context).get_span_context()
            links = [trace.Link(producer, {"msgq.link.reason": "retry"})]
            context = Context()  # a new trace: the producer's may be long closed
        self.span = otel.tracer.start_span(
            f"{genai.OPERATION} {request.model}",
            context=context,
            kind=trace.SpanKind.CLIENT,
            attributes=self.attrs,
            links=links,
        )
        self.started = time.monotonic()
        self.ended: float | None = None
        self.error_type: str | None = None
        self.usage: dict[str, Any] = {}

    def __enter__(self) -> CallSpan:
        return self

    def succeeded(self, reply: UpstreamReply) -> None:
        self.ended = time.monotonic()
        answer = genai.response_attributes(reply.message)
        if genai.capture_content():
            answer |= genai.output_content(reply.message)
        self.attrs |= answer
        self.span.set_attributes(answer)
        self.usage = genai.usage_attributes(reply.message.get("usage") or {})

    def failed(self, error_type: str, message: str) -> None:
        self.ended = time.monotonic()
        self.error_type = error_type
        self.span.set_attribute("error.type", error_type)
        self.span.set_status(trace.StatusCode.ERROR, message[:200])

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        delay_s = deferred_s(exc)  # a deferral: the job runs again later
        if delay_s is not None and self.error_type is not None:
            self.span.add_event(
                "msgq.retry_scheduled",
                {"msgq.attempt": self.attrs["msgq.attempt"], "msgq.retry.delay_s": delay_s},
            )
        elif exc is not None and delay_s is None and self.error_type is None:
            self.failed(type(exc).__name__, str(exc))  # a cancel, a shutdown, a bug
        self.span.end()
        self._measure()

    def _measure(self) -> None:
        metric = genai.metric_attributes(self.attrs)
        if self.error_type is not None:
            metric["error.type"] = self.error_type
        self.otel.duration.record((self.ended or time.monotonic()) - self.started, metric)
        if self.usage:
            record_tokens(self.otel, self.usage, metric)


def record_tokens(otel: _Otel, usage: dict[str, Any], metric: dict[str, Any]) -> None:
    for kind in ("input", "output"):
        otel.tokens.record(
            usage[f"gen_ai.usage.{kind}_tokens"], metric | {"gen_ai.token.type": kind}
        )


def call_span(
    record: JobRecord,
    request: MessageRequest,
    body: dict[str, Any],
    *,
    stream: bool,
    traceparent: str | None,
    tracestate: str | None,
) -> CallSpan | _NoSpan:
    if _otel is None:
        return NO_SPAN
    return CallSpan(_otel, record, request, body, stream=stream, parent=(traceparent, tracestate))


@contextlib.contextmanager
def upstream_batch(batch: UpstreamBatch) -> Iterator[None]:
    """A span for one upstream Message Batch, from its create call to its results read; the
    members' spans made meanwhile (`batch_result`) link to it and it to them."""
    if _otel is None:
        yield
        return
    started = _ns(batch.sent_at) if batch.sent_at else time.time_ns()
    attrs: dict[str, Any] = {
        "gen_ai.provider.name": genai.PROVIDER,
        "msgq.upstream_batch_id": batch.upstream_id or "",
        "msgq.batch.handle": batch.handle,
        "msgq.batch.requests": batch.count,
    } | _otel.server
    span = _otel.tracer.start_span(
        "msgq.upstream_batch",
        context=Context(),
        kind=trace.SpanKind.CLIENT,
        attributes=attrs,
        start_time=started,
    )
    token = _batch.set((span, started))
    try:
        yield
    finally:
        _batch.reset(token)
        span.end()


def batch_result(record: JobRecord, result: dict[str, Any]) -> None:
    """One member's `chat` span in its producer's trace, as long as its batch ran."""
    current = _batch.get()
    if _otel is None or current is None:
        return
    batch_span, started = current
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": genai.OPERATION,
        "gen_ai.provider.name": genai.PROVIDER,
        "gen_ai.request.model": record.model or "",
        "msgq.served_by": "batch",
        **_otel.server,
        **genai.job_attributes(record),
    }
    usage: dict[str, Any] = {}
    kind = result.get("type")
    if kind == "succeeded":
        message = result.get("message") or {}
        attrs |= genai.response_attributes(message)
        usage = genai.usage_attributes(message.get("usage") or {})
    else:
        error: dict[str, Any] = result.get("error") or {}
        nested = error.get("error")
        inner: dict[str, Any] = nested if isinstance(nested, dict) else error
        attrs["error.type"] = str(inner.get("type") or kind or "_OTHER")
    span = _otel.tracer.start_span(
        f"{genai.OPERATION} {record.model}",
        context=_parent(record.traceparent, None),
        kind=trace.SpanKind.CLIENT,
        attributes=attrs,
        links=[trace.Link(batch_span.get_span_context(), {"msgq.link.reason": "upstream_batch"})],
        start_time=started,
    )
    if "error.type" in attrs:
        span.set_status(trace.StatusCode.ERROR)
    span.end()
    batch_span.add_link(span.get_span_context(), {"msgq.job_id": record.id})
    if usage:
        record_tokens(_otel, usage, genai.metric_attributes(attrs))
