"""Traces beyond one call: the batch lane's linked spans, OTLP export configured by OTEL_*
alone (a `msgq worker` subprocess and a receiver in the test), and the dashboard's trace link."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider

from msgq.client import Client
from msgq.dev.stack import msgq_command
from msgq.settings import Settings
from schemas import JobStatus
from tests.conftest import KEY_A, StartWorker, eventually, stop_workers, worker_env
from tests.test_tracing import MODEL, TEXT, Traced, hex_trace
from tests.test_tracing import _no_otel_env as _no_otel_env  # the autouse fixture, reused
from tests.test_tracing import traced as traced
from tests.test_ui import sign_in


async def test_batch_lane_job_span_is_linked_to_its_upstream_batch(
    settings: Settings, client: Client, start_worker: StartWorker, traced: Traced
) -> None:
    """The member's `chat` span stays in its producer's trace and links to the upstream batch's
    span, which links back to it."""
    lane = {"batch_max_wait_s": 0.3, "batch_poll_s": 0.2, "batch_poll_max_s": 0.5}
    await start_worker(settings.model_copy(update=lane))
    with traced.tracer.start_as_current_span("producer") as producer:
        job = await client.submit(TEXT, lane="batch")
    record = await client.wait(job.id, timeout=30)
    assert record.status is JobStatus.SUCCEEDED and record.served_by is not None
    (call,) = traced.calls(job.id)

    async def batch_ended() -> bool:  # after every result is applied, so after the record
        return bool(traced.named("msgq.upstream_batch"))

    await eventually(batch_ended)
    (batch,) = traced.named("msgq.upstream_batch")
    assert call.context and batch.context and call.attributes and batch.attributes
    assert call.context.trace_id == producer.get_span_context().trace_id
    assert call.attributes["msgq.served_by"] == "batch"
    assert call.attributes["gen_ai.usage.output_tokens"] == record.usage.output_tokens  # type: ignore[union-attr]
    assert [link.context.span_id for link in call.links] == [batch.context.span_id]
    assert [link.context.span_id for link in batch.links] == [call.context.span_id]
    assert str(batch.attributes["msgq.upstream_batch_id"]).startswith("msgbatch_")
    (queued,) = traced.named("msgq.queued")
    assert hex_trace(queued) == hex_trace(call)


class Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint: keeps each /v1/traces body, accepts anything else."""

    bodies: list[bytes]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path == "/v1/traces":
            self.bodies.append(body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[bytes]]]:
    bodies: list[bytes] = []
    handler = type("Handler", (Receiver,), {"bodies": bodies})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    server.shutdown()
    server.server_close()


async def test_otlp_export_is_configured_by_otel_variables_alone(
    settings: Settings, client: Client, receiver: tuple[str, list[bytes]], tmp_path: Path
) -> None:
    """`msgq worker` with only OTEL_* set exports the job's spans over OTLP/HTTP, in the
    producer's trace and under OTEL_SERVICE_NAME."""
    endpoint, bodies = receiver
    env = worker_env(
        settings,
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_SERVICE_NAME="msgq-e2e",
        OTEL_BSP_SCHEDULE_DELAY="50",
        OTEL_METRIC_EXPORT_INTERVAL="200",
    )
    worker = spawn_worker(env, tmp_path / "worker.log")
    try:
        producer = TracerProvider().get_tracer("producer")
        with producer.start_as_current_span("producer") as span:
            job = await client.submit(TEXT)
        assert (await client.wait(job.id, timeout=30)).status is JobStatus.SUCCEEDED
        trace_id = span.get_span_context().trace_id.to_bytes(16, "big")

        async def exported() -> bool:
            return any(s.name == f"chat {MODEL}" for s, _ in exported_spans(bodies))

        await eventually(exported, timeout_s=20)
    finally:
        stop_workers(worker)
    call, service = next((s, svc) for s, svc in exported_spans(bodies) if s.name.startswith("chat"))
    assert call.trace_id == trace_id and service == "msgq-e2e"
    keys = {a.key for a in call.attributes}
    assert {"gen_ai.provider.name", "gen_ai.usage.input_tokens", "msgq.job_id"} <= keys


def spawn_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(msgq_command("worker"), env=env, stdout=out, stderr=out)


def exported_spans(bodies: list[bytes]) -> Iterator[tuple[object, str]]:
    """(span, service.name) of every span the receiver got."""
    for body in list(bodies):
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            names = [
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            ]
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    yield span, names[0] if names else ""


async def test_dashboard_job_page_shows_the_trace_and_its_link(
    api_settings: Settings, client: Client
) -> None:
    """The job page names the trace ID and links it through MSGQ_TRACE_URL_TEMPLATE."""
    from msgq.http.app import create_app

    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    template = "http://jaeger:16686/trace/{trace_id}"
    custom = api_settings.model_copy(update={"trace_url_template": template})
    job = await client.submit(
        TEXT, tenant="tenant-a", traceparent=f"00-{trace_id}-00f067aa0ba902b7-01"
    )
    app = create_app(custom)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://msgq.test") as ui:
            await sign_in(ui, KEY_A)
            page = await ui.get(f"/ui/jobs/{job.id}")
    assert page.status_code == 200
    assert f'href="http://jaeger:16686/trace/{trace_id}"' in page.text


def test_trace_url_template_must_name_the_trace_id() -> None:
    """A template without {trace_id} (or not http) is refused at start-up."""
    with pytest.raises(ValueError, match="trace_url_template"):
        Settings(_env_file=None, trace_url_template="http://jaeger/trace/")
    assert Settings(_env_file=None, trace_url_template="").trace_url_template == ""


def test_compose_tracing_profile_runs_jaeger_beside_the_stack() -> None:
    """docker-compose.yml parses; profile `tracing` has Jaeger with OTLP/HTTP; workers take
    their endpoint from OTEL_EXPORTER_OTLP_ENDPOINT."""
    import yaml

    compose = yaml.safe_load((Path(__file__).parent.parent / "docker-compose.yml").read_text())
    jaeger = compose["services"]["jaeger"]
    assert jaeger["profiles"] == ["tracing"] and "jaegertracing/all-in-one" in jaeger["image"]
    assert any(port.endswith(":4318") for port in jaeger["ports"])
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in compose["services"]["worker"]["environment"]
