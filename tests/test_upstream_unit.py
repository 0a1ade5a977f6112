"""Unit tests of pure logic: error classification, retry-after parsing, backoff, cost."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest

from msgq.errors import (
    InvalidResponseError,
    OverloadedError,
    RateLimitError,
    RejectedError,
    SpendLimitError,
    UnavailableError,
)
from msgq.pricing import cost_usd
from worker.job.backoff import backoff_delay_s, retry_delay_s
from worker.upstream.classify import (
    classify,
    classify_response,
    header_dict,
    parse_message,
    parse_retry_after,
)


def response(status: int, body: Any = None, **headers: str) -> httpx.Response:
    if body is None:
        body = {
            "type": "error",
            "error": {"type": "x", "message": f"m{status}"},
            "request_id": "req_body",
        }
    content = body if isinstance(body, bytes) else httpx.Response(200, json=body).content
    return httpx.Response(status, content=content, headers=headers)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (408, UnavailableError),
        (409, UnavailableError),
        (429, RateLimitError),
        (500, UnavailableError),
        (502, UnavailableError),
        (503, UnavailableError),
        (504, UnavailableError),
        (529, OverloadedError),
        (400, RejectedError),
        (401, RejectedError),
        (402, RejectedError),
        (403, RejectedError),
        (404, RejectedError),
        (413, RejectedError),
    ],
)
def test_status_classification(status: int, cls: type) -> None:
    """Each status maps to the class SPEC §3 names, with retryable set accordingly."""
    error = classify_response(response(status))
    assert type(error) is cls
    assert error.retryable is (status in {408, 409, 429, 500, 502, 503, 504, 529})
    assert error.status_code == status and error.request_id == "req_body"


def test_x_should_retry_wins_over_status() -> None:
    """x-should-retry is obeyed first, in both directions."""
    assert classify_response(response(503, **{"x-should-retry": "false"})).retryable is False
    assert classify_response(response(400, **{"x-should-retry": "true"})).retryable is True


def test_spend_limit_signals_are_final() -> None:
    """The spend-cap 429 and the usage-limit 400 are spend_limit errors, never retried."""
    cap = {
        "type": "error",
        "error": {
            "type": "rate_limit_error",
            "message": "cap",
            "details": {"error_code": "enforced_spend_limit_reached"},
        },
    }
    usage_400 = {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "You have reached your specified API usage limits. Try later.",
        },
    }
    for answer in (response(429, cap), response(400, usage_400)):
        error = classify_response(answer)
        assert isinstance(error, SpendLimitError)
        assert error.retryable is False and error.error_type == "spend_limit"


def test_non_json_error_body_is_classified_by_status() -> None:
    """A Cloudflare-style 413 with an HTML body is still a final 413."""
    error = classify_response(response(413, b"<html>too large</html>", **{"request-id": "req_h"}))
    assert isinstance(error, RejectedError) and error.message == "HTTP 413"
    assert error.request_id == "req_h"


def test_retry_after_ms_beats_retry_after() -> None:
    """retry-after-ms first, then retry-after in seconds, then as an HTTP date."""
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "1500", "retry-after": "9"})) == 1.5
    assert parse_retry_after(httpx.Headers({"retry-after": "2"})) == 2.0
    date = parse_retry_after(httpx.Headers({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}))
    assert date == 0.0
    assert parse_retry_after(httpx.Headers({})) is None


def test_200_that_is_not_a_message_is_final() -> None:
    """A 200 with malformed JSON or a non-Message body is a final invalid_response."""
    for body in (b'{"id": "msg_', {"hello": "world"}):
        answer = response(200, body)
        with pytest.raises(InvalidResponseError) as info:
            parse_message(answer.content, answer.headers)
        assert info.value.retryable is False


def test_backoff_grows_caps_and_jitters() -> None:
    """Delays double from the base, stay within [step/2, step], and stop at the cap."""
    rng = random.Random(1)
    for attempt, step in [(1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (20, 60.0)]:
        delays = [backoff_delay_s(attempt, rng=rng) for _ in range(50)]
        assert all(step / 2 <= d <= step for d in delays)
        assert len(set(delays)) > 1
    assert retry_delay_s(3, 2.5, base_s=1, factor=2, max_s=60) == 2.5


def test_cost_uses_price_table_and_cache_split() -> None:
    """Cost sums input, output, cache writes (5m and 1h) and reads; batch halves it."""
    usage = {"input_tokens": 1_000_000, "output_tokens": 1_000_000}
    assert cost_usd("claude-haiku-4-5", usage) == pytest.approx(6.0)
    cached = {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_creation_input_tokens": 30_000,
        "cache_creation": {"ephemeral_1h_input_tokens": 10_000},
        "cache_read_input_tokens": 10_000,
    }  # 40,000 prompt tokens: under Sonnet's 200k long-context tier
    assert cost_usd("claude-sonnet-4-5", cached) == pytest.approx((2 * 3.75 + 6.0 + 0.3) / 100)
    assert cost_usd("claude-haiku-4-5", {**usage, "service_tier": "batch"}) == pytest.approx(3.0)
    assert cost_usd("claude-unknown", usage) is None


def test_classify_reads_plain_values_as_the_aiohttp_path_passes_them() -> None:
    """The Messages path hands `classify` a status, lower-cased headers (repeats joined) and
    bytes: the same meaning as the httpx answer, with no httpx.Response built."""
    raw = [("Retry-After", "7"), ("Request-Id", "req_plain"), ("X-Should-Retry", "false")]
    headers = header_dict([*raw, ("Via", "a"), ("via", "b")])
    assert headers["via"] == "a, b" and headers["retry-after"] == "7"
    body = b'{"type":"error","error":{"type":"overloaded_error","message":"busy"}}'
    error = classify(529, headers, body)
    assert type(error) is RejectedError  # x-should-retry: false wins over the status
    assert error.retry_after_s == 7.0 and error.request_id == "req_plain"
    assert error.error_type == "overloaded_error" and error.message == "busy"
