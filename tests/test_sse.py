"""The worker's SSE parser (worker/upstream/sse.py) against the spec's rules, chunked every way."""

from __future__ import annotations

from worker.upstream.sse import ServerSentEvent, SSEDecoder

STREAM = (
    b"\xef\xbb\xbf: a comment\r\n"
    b"event: message_start\r\n"
    b'data: {"a":\r\n'
    b"data:1}\r\n"
    b"id: 7\r\n"
    b"\r\n"
    b"event: ping\n"
    b"data: {}\n"
    b"retry: 1500\n"
    b"\n"
    b"unknown: field\r"
    b"data: caf\xc3\xa9\r"
    b"id: bad\x00id\r"
    b"retry: soon\r"
    b"\r"
    b"data: never dispatched"
)
EXPECTED = [
    ServerSentEvent("message_start", '{"a":\n1}', "7", None),
    ServerSentEvent("ping", "{}", "7", 1500),
    ServerSentEvent("", "café", "7", None),
]


def decode(chunks: list[bytes]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def test_fields_multiline_data_comments_and_line_ends() -> None:
    """CRLF, LF and CR line ends; a BOM and comments skipped; data lines joined by LF; a bad id
    or retry ignored; the last event ID carried over; an unterminated event dropped."""
    assert decode([STREAM]) == EXPECTED


def test_any_chunking_gives_the_same_events() -> None:
    """Byte by byte, and split at every offset (a CRLF across two chunks is one line end)."""
    assert decode([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED
    for cut in range(len(STREAM) + 1):
        assert decode([STREAM[:cut], b"", STREAM[cut:]]) == EXPECTED, cut


def test_a_name_without_data_still_dispatches() -> None:
    """As httpx-sse did (the spec would drop it): `event: message_stop` alone ends a stream."""
    assert decode([b"event: message_stop\n\n\n"]) == [ServerSentEvent("message_stop", "", "", None)]


def test_value_and_space_rules() -> None:
    """One leading space is stripped, no more; a line with no colon is a field with value ""."""
    events = decode([b"data:  two\ndata\n\n"])
    assert events == [ServerSentEvent("", " two\n", "", None)]


def test_a_multi_megabyte_line_in_small_chunks_is_copied_once() -> None:
    """A 4 MiB `data` line in 1 KiB chunks: one event with every byte, and the decoder copies
    each byte of the line into a joined line once (the old one re-joined the partial line with
    every chunk: ~4,096 copies of a growing line, 8 GiB for this one)."""
    payload = bytes(range(97, 123)) * (4 * 1024 * 1024 // 26)
    body = b"event: content_block_delta\r\ndata: " + payload + b"\r\n\r\n"
    decoder = SSEDecoder()
    events = [e for i in range(0, len(body), 1024) for e in decoder.feed(body[i : i + 1024])]
    assert events == [ServerSentEvent("content_block_delta", payload.decode(), "", None)]
    assert decoder.copied_bytes <= len(body)


def test_line_ends_split_across_chunks_of_a_long_line() -> None:
    """A CR ending one chunk and an LF starting the next stay one line end, mid-way through
    lines that span many chunks; a chunk of only a line end completes a pending line."""
    body = b"data: " + b"x" * 5000 + b"\r\n" + b"data: " + b"y" * 3000 + b"\r" + b"\n\n"
    chunks = [body[i : i + 700] for i in range(0, len(body), 700)]
    expected = [ServerSentEvent("", "x" * 5000 + "\n" + "y" * 3000, "", None)]
    assert decode(chunks) == expected
    assert decode([body[:5006], b"\r", b"\n", body[5008:]]) == expected
