"""The caps on what a tenant holds open in an API process (its SSE streams; its drop-in calls),
and a streaming response that always gives its slot back.

Counted per API process (each process bounds what it holds: its connections, subscriptions and
buffers); a tenant at its cap gets 429 `rate_limit_error`, in the API's shape, until one of its
streams or calls ends. The official SDKs retry a 429 with back-off on their own.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncGenerator, Callable

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from msgq.http.errors import ApiError

DROPIN_CALLS = "open drop-in calls (MSGQ_MAX_DROPIN_CALLS_PER_TENANT); wait for one to end"


class StreamLimit:
    """Open streams (or calls) per tenant, at most `per_tenant` each; `what` names them and
    their setting in the 429's message."""

    def __init__(
        self,
        per_tenant: int,
        what: str = "open event streams (MSGQ_MAX_STREAMS_PER_TENANT); close one, or poll with "
        "?wait",
    ) -> None:
        self.per_tenant = per_tenant
        self.what = what
        self.open: Counter[str] = Counter()

    def acquire(self, tenant: str) -> None:
        """Take a slot, or raise ApiError 429 when the tenant holds them all."""
        if self.open[tenant] >= self.per_tenant:
            msg = f"too many {self.what}: {self.per_tenant} for this key"
            raise ApiError(429, msg, error_type="rate_limit_error")
        self.open[tenant] += 1

    def release(self, tenant: str) -> None:
        self.open[tenant] -= 1
        if self.open[tenant] <= 0:
            del self.open[tenant]


class ClosingStream(StreamingResponse):
    """A StreamingResponse that, however it ends (finished, client gone, cancelled), closes its
    generator (its subscription goes at once, not when collected) and calls `on_close` once."""

    def __init__(
        self,
        content: AsyncGenerator[bytes, None],
        *,
        on_close: Callable[[], None],
        media_type: str,
        headers: dict[str, str],
    ) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self._generator = content
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
            with contextlib.suppress(Exception):
                await self._generator.aclose()
