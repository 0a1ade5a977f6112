"""Server-sent events from the bytes of a response body, as they arrive (WHATWG HTML, "Parsing an
event stream"): lines end in CRLF, LF or CR (a CR at the end of one chunk and an LF at the start
of the next are one line end); `:` lines are comments; `event`, `data` (one per line, joined by
LF), `id` (ignored if it holds NUL; kept across events) and `retry` (digits only) are the fields,
any other is ignored; a blank line dispatches; an event left unterminated at the end is dropped.

Why our own: the worker's Messages calls go over aiohttp (see `worker.upstream.client`), and no
maintained SSE client for aiohttp reads a POST's answer (aiohttp-sse is server side only;
aiohttp-sse-client has had no release since 2021 and is an EventSource that reconnects, which a
paid call must never do). httpx-sse's decoder is private to that library.

One deliberate departure, kept from httpx-sse (the worker's parser until now), so that nothing
the API sends is read differently: a blank line dispatches an event that has a name but no
`data` (the spec would drop it), with `data` "".
"""

from __future__ import annotations

from dataclasses import dataclass

BOM = "\ufeff"


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    event: str = ""
    data: str = ""
    id: str = ""
    retry: int | None = None


class SSEDecoder:
    """`feed(chunk)` per chunk of the body (any split) → the events it completed, in order."""

    def __init__(self) -> None:
        # The start of a line whose end has not arrived, as the chunks that brought it: joined
        # once, when its end comes (re-joining on every chunk made a long line quadratic).
        self._pending: list[bytes] = []
        self.copied_bytes = 0  # bytes copied into joined lines: linear in the bytes fed
        self._after_cr = False  # the last chunk ended in CR: an LF first in the next is its pair
        self._started = False  # past the BOM check
        self._event = ""
        self._data: list[str] = []
        self._last_id = ""
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        for raw in self._lines(chunk):
            # LF and CR are never part of a multi-byte UTF-8 sequence: each line decodes alone.
            line = raw.decode("utf-8", "replace")
            if not self._started:
                self._started = True
                line = line.removeprefix(BOM)
            if not line:
                if self._event or self._data or self._retry is not None:
                    events.append(self._dispatch())
            elif line[0] != ":":
                self._field(line)
        return events

    def _lines(self, chunk: bytes) -> list[bytes]:
        if not chunk:
            return []  # nothing: a CR before it still pairs with an LF after it
        if self._after_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._after_cr = False
        # Only the chunk is searched: what is pending holds no line end.
        cut = max(chunk.rfind(b"\n"), chunk.rfind(b"\r")) + 1
        if not cut:
            if chunk:
                self._pending.append(chunk)
            return []
        head = chunk[:cut] if cut < len(chunk) else chunk
        if self._pending:
            head = b"".join([*self._pending, head])
            self.copied_bytes += len(head)
            self._pending = []
        if cut < len(chunk):
            self._pending.append(chunk[cut:])
        else:
            self._after_cr = head[-1:] == b"\r"
        return head.splitlines()  # bytes: on CRLF, LF and CR only (str's would split on more)

    def _field(self, line: str) -> None:
        name, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)

    def _dispatch(self) -> ServerSentEvent:
        event = ServerSentEvent(self._event, "\n".join(self._data), self._last_id, self._retry)
        self._event, self._data, self._retry = "", [], None  # the last event ID carries over
        return event
