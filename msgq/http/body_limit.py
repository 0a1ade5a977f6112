"""ASGI middleware: refuse bodies over the limit before reading them whole (413)."""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from msgq.http.errors import error_body
from schemas.batches import MAX_BATCH_BYTES

BATCH_PREFIX = "/v1/messages/batches"


class BodyTooLargeError(Exception):
    pass


class BodyLimit:
    """32 MiB by default (the Messages API's), 256 MB on batch creation (the Batches API's)."""

    def __init__(self, app: ASGIApp, *, default_bytes: int) -> None:
        self.app = app
        self.default_bytes = default_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = MAX_BATCH_BYTES if scope["path"].startswith(BATCH_PREFIX) else self.default_bytes
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit)
            return
        seen = 0
        exceeded = started = False

        async def counting_receive() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                exceeded = True
                raise BodyTooLargeError
            return message

        async def tracking_send(message: Message) -> None:
            # A chunked body over the limit surfaces inside the app's body parsing, which answers
            # its own 400; replace whatever the app says with the 413 the client is owed.
            nonlocal started
            if exceeded:
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await _too_large(send, limit)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLargeError:
            if not started:
                started = True
                await _too_large(send, limit)


async def _too_large(send: Send, limit: int) -> None:
    body = orjson.dumps(error_body("request_too_large", f"request body exceeds {limit} bytes"))
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
