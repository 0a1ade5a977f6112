"""`request-id` on every answer, as the API sends it: the SDKs expose it (`_request_id`,
`APIStatusError.request_id`) and people quote it in support threads.

A drop-in answer that came from the API carries the API's own ID (set by the route); every
other answer gets one minted here, `req_msgq_` + 96 random bits, so an ID in a ticket says at a
glance whether the API or msgq answered.
"""

from __future__ import annotations

import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"request-id"


def new_request_id() -> str:
    return "req_msgq_" + secrets.token_urlsafe(12)


class RequestIds:
    """ASGI middleware: adds `request-id` to a response that does not have one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == HEADER for name, _ in headers):
                    headers.append((HEADER, new_request_id().encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)
