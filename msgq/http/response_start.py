"""`ResponseStart`: the base of the API's middlewares that look at (or add to) an answer's first
message, the status and headers, as plain ASGI: Starlette's `@app.middleware("http")` runs each
request through a task group and a memory stream of its own."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class ResponseStart:
    """ASGI middleware: `on_start` sees each HTTP answer's `http.response.start` message and
    returns the one to send."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def hooked(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = self.on_start(scope, message)
            await send(message)

        await self.app(scope, receive, hooked)

    def on_start(self, scope: Scope, message: Message) -> Message:
        raise NotImplementedError
