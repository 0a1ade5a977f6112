"""The cap on a tenant's open SSE streams, and a streaming response that always gives its slot
back.

Counted per API process (each process bounds what it holds: its streams and their buffers); a
tenant at its cap gets 429 `rate_limit_error`, in the API's shape, until one of its streams ends.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncGenerator, Callable

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from msgq.http.errors import ApiError


class StreamLimit:
    """Open streams per tenant, at most `per_tenant` each."""

    def __init__(self, per_tenant: int) -> None:
        self.per_tenant = per_tenant
        self.open: Counter[str] = Counter()

    def acquire(self, tenant: str) -> None:
        """Take a slot, or raise ApiError 429 when the tenant holds them all."""
        if self.open[tenant] >= self.per_tenant:
            msg = (
                f"too many open event streams for this key ({self.per_tenant}, "
                "MSGQ_MAX_STREAMS_PER_TENANT); close one, or poll with ?wait"
            )
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
