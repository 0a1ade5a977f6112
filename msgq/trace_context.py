"""W3C trace context carried by a job: captured at submit, read back by the worker.

A job crosses Redis, so the caller's trace would end at `submit`: the job spec carries the
caller's `traceparent` and `tracestate` (the W3C Trace Context headers) and the worker continues
that trace. Producers get it three ways: the Python client reads the active OpenTelemetry span,
the HTTP API the request's `traceparent` header, and a raw producer writes the two fields in the
job's kwargs (`k`). This module needs only the standard library: `opentelemetry-api` is imported
if present, and without it (or with no span active) capture costs one failed lookup.
"""

from __future__ import annotations

import re
from typing import Any

try:  # optional: only an application that traces has a span to capture
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover - exercised by installs without the otel extra
    _trace = None  # type: ignore[assignment]  # the guarded import's fallback

# version-traceid-parentid-flags; all-zero IDs are invalid (W3C Trace Context, section 3.2).
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
MAX_TRACESTATE = 512  # W3C: a vendor may truncate beyond this; we drop it rather than cut it


def valid_traceparent(value: str | None) -> str | None:
    """The header if it is a well-formed, non-zero `traceparent`, else None.

    Producers' headers are outside input: a malformed one is ignored, never an error, because a
    job must not fail over its tracing metadata.
    """
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None or match[1] == "ff" or match[2] == _ZERO_TRACE or match[3] == _ZERO_SPAN:
        return None
    return match[0]


def valid_tracestate(value: str | None) -> str | None:
    if not value or len(value) > MAX_TRACESTATE:
        return None
    return value.strip() or None


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex trace ID a tracing backend looks a trace up by."""
    checked = valid_traceparent(traceparent)
    return checked.split("-")[1] if checked else None


def current_context() -> tuple[str | None, str | None]:
    """(traceparent, tracestate) of the active OpenTelemetry span; (None, None) without one."""
    if _trace is None:
        return None, None
    context = _trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None, None
    traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    state = context.trace_state.to_header() if context.trace_state else None
    return traceparent, valid_tracestate(state)


def trace_fields(traceparent: str | None, tracestate: str | None) -> dict[str, Any]:
    """The job spec's trace fields: the given context if valid, else the active span's."""
    checked = valid_traceparent(traceparent)
    if checked is None:
        checked, tracestate = current_context()
    if checked is None:
        return {}
    state = valid_tracestate(tracestate)
    return {"traceparent": checked, **({"tracestate": state} if state else {})}
