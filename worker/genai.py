"""The OpenTelemetry GenAI semantic conventions for one Messages call, as plain attribute dicts.

Followed: the GenAI conventions of OpenTelemetry semantic-conventions v1.41.1 (the last release
of them in that repository, before they moved to open-telemetry/semantic-conventions-genai),
with their Anthropic page: span `chat {model}` of kind CLIENT, `gen_ai.provider.name`
"anthropic" at creation, and `gen_ai.usage.input_tokens` = input + cache reads + cache writes.
The metrics are `gen_ai.client.token.usage` and `gen_ai.client.operation.duration`. Nothing
here imports OpenTelemetry: these are dicts, cheap to test and shared by spans and metrics.

Content (`gen_ai.input.messages`, `gen_ai.output.messages`, `gen_ai.system_instructions`) is
Opt-In in the conventions: recorded only when OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT
asks for spans (the flag OpenTelemetry's Python GenAI instrumentations read), and even then
without image or document bytes. The API key is never an attribute.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

import orjson

from schemas import JobRecord, MessageRequest

OPERATION = "chat"
PROVIDER = "anthropic"
CAPTURE_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
# The conventions' advised histogram buckets (gen-ai-metrics.md).
TOKEN_BUCKETS = [4.0**n for n in range(14)]
DURATION_BUCKETS_S = [0.01 * 2**n for n in range(14)]

Attributes = dict[str, Any]


def capture_content() -> bool:
    """The Opt-In flag: `true`, `span_only` or `span_and_event` (case-insensitive)."""
    return os.environ.get(CAPTURE_ENV, "").strip().lower() in (
        "true",
        "span_only",
        "span_and_event",
    )


def server_attributes(base_url: str) -> Attributes:
    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return {"server.address": parts.hostname or "", "server.port": port}


def request_attributes(request: MessageRequest, *, stream: bool) -> Attributes:
    """What is known when the call starts (the sampling-relevant ones among them)."""
    attrs: Attributes = {
        "gen_ai.operation.name": OPERATION,
        "gen_ai.provider.name": PROVIDER,
        "gen_ai.request.model": request.model,
        "gen_ai.request.max_tokens": request.max_tokens,
    }
    for name, value in (
        ("temperature", request.temperature),
        ("top_p", request.top_p),
        ("top_k", request.top_k),
    ):
        if value is not None:
            attrs[f"gen_ai.request.{name}"] = float(value)
    if request.stop_sequences:
        attrs["gen_ai.request.stop_sequences"] = list(request.stop_sequences)
    if stream:  # "if and only if the request is streaming"
        attrs["gen_ai.request.stream"] = True
    return attrs


def job_attributes(record: JobRecord) -> Attributes:
    """msgq's own: which job, whose, how urgent, which lane, which attempt."""
    attrs: Attributes = {
        "msgq.job_id": record.id,
        "msgq.priority": record.priority.value,
        "msgq.lane": record.lane.value,
        "msgq.attempt": record.attempts,
    }
    if record.tenant:
        attrs["msgq.tenant"] = record.tenant
    return attrs


def response_attributes(message: dict[str, Any]) -> Attributes:
    attrs: Attributes = {}
    if message.get("id"):
        attrs["gen_ai.response.id"] = str(message["id"])
    if message.get("model"):
        attrs["gen_ai.response.model"] = str(message["model"])
    if message.get("stop_reason"):
        attrs["gen_ai.response.finish_reasons"] = [str(message["stop_reason"])]
    return attrs | usage_attributes(message.get("usage") or {})


def usage_attributes(usage: dict[str, Any]) -> Attributes:
    """Anthropic's `input_tokens` excludes the cache; the conventions' input count includes it."""
    read = int(usage.get("cache_read_input_tokens") or 0)
    written = int(usage.get("cache_creation_input_tokens") or 0)
    return {
        "gen_ai.usage.input_tokens": int(usage.get("input_tokens") or 0) + read + written,
        "gen_ai.usage.output_tokens": int(usage.get("output_tokens") or 0),
        "gen_ai.usage.cache_read.input_tokens": read,
        "gen_ai.usage.cache_creation.input_tokens": written,
    }


def metric_attributes(span_attrs: Attributes) -> Attributes:
    """The low-cardinality subset the two metrics take (no job IDs, no response IDs)."""
    keep = (
        "gen_ai.operation.name",
        "gen_ai.provider.name",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "server.address",
        "server.port",
        "error.type",
    )
    return {k: span_attrs[k] for k in keep if k in span_attrs}


def input_content(body: dict[str, Any]) -> Attributes:
    """The Opt-In input attributes, as JSON strings in the conventions' message schema."""
    attrs: Attributes = {
        "gen_ai.input.messages": _json(
            [
                {"role": m.get("role"), "parts": _parts(m.get("content"))}
                for m in body.get("messages") or []
                if isinstance(m, dict)
            ]
        )
    }
    if body.get("system"):
        attrs["gen_ai.system_instructions"] = _json(_parts(body["system"]))
    return attrs


def output_content(message: dict[str, Any]) -> Attributes:
    output = {
        "role": "assistant",
        "parts": _parts(message.get("content")),
        "finish_reason": message.get("stop_reason"),
    }
    return {"gen_ai.output.messages": _json([output])}


def _parts(content: Any) -> list[dict[str, Any]]:
    """Anthropic content blocks → the conventions' parts; binary sources are left out."""
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    parts: list[dict[str, Any]] = []
    for block in content if isinstance(content, list) else []:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "content": block.get("text", "")})
        elif kind == "tool_use":
            parts.append(
                {
                    "type": "tool_call",
                    "id": block.get("id"),
                    "name": block.get("name"),
                    "arguments": block.get("input"),
                }
            )
        elif kind == "tool_result":
            result = block.get("content")
            response = result if isinstance(result, str) else _parts(result)
            parts.append(
                {"type": "tool_call_response", "id": block.get("tool_use_id"), "response": response}
            )
        elif kind:
            parts.append({"type": str(kind)})  # images, documents: named, never their bytes
    return parts


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()
