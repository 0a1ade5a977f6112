"""`python -m bench.sse_decode`: CPU time of the worker's SSE decoder on one long line.

One 16 MiB `data` line fed in 16 KiB chunks (what a large tool input or a long text block in
one delta looks like to the decoder). The decoder joins a pending line once, when its end
arrives, so this is linear in the line's length; tests/test_sse.py holds that structurally.
"""

from __future__ import annotations

import time

from worker.upstream.sse import SSEDecoder

LINE_BYTES = 16 * 1024 * 1024
CHUNK_BYTES = 16 * 1024


def decode_cpu_s(line_bytes: int = LINE_BYTES, chunk_bytes: int = CHUNK_BYTES) -> float:
    """Process CPU seconds to decode one event whose data line is `line_bytes` long."""
    body = b"data: " + b"x" * line_bytes + b"\n\n"
    chunks = [body[i : i + chunk_bytes] for i in range(0, len(body), chunk_bytes)]
    decoder = SSEDecoder()
    started = time.process_time()
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    spent = time.process_time() - started
    [event] = events
    assert len(event.data) == line_bytes
    return spent


if __name__ == "__main__":
    print(f"16 MiB line, 16 KiB chunks: {decode_cpu_s():.3f} s CPU")
