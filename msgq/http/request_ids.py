"""`request-id` on every answer, as the API sends it: the SDKs expose it (`_request_id`,
`APIStatusError.request_id`) and people quote it in support threads.

A drop-in answer that came from the API carries the API's own ID (set by the route); every
other answer gets one minted here, `req_msgq_` + 96 random bits, so an ID in a ticket says at a
glance whether the API or msgq answered.
"""

from __future__ import annotations

import secrets

from starlette.types import Message, Scope

from msgq.http.response_start import ResponseStart

HEADER = b"request-id"


def new_request_id() -> str:
    return "req_msgq_" + secrets.token_urlsafe(12)


class RequestIds(ResponseStart):
    """ASGI middleware: adds `request-id` to a response that does not have one."""

    def on_start(self, scope: Scope, message: Message) -> Message:
        headers = list(message.get("headers", []))
        if any(name.lower() == HEADER for name, _ in headers):
            return message
        headers.append((HEADER, new_request_id().encode()))
        return {**message, "headers": headers}
