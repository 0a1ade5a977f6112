"""The calls to the Message Batches endpoints: create (with a streamed body), retrieve, list,
cancel, and the results as a stream of JSONL lines. Failures are classified as for
`/v1/messages` (`classify`), so 429 and `retry-after` mean the same here."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from msgq.errors import InvalidResponseError, UnavailableError
from worker.upstream.classify import classify_response

PATH = "/v1/messages/batches"


class LaneApi:
    """Thin: one method per endpoint, each raising an UpstreamError subclass on failure."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def create(
        self, body: AsyncIterator[bytes], *, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """POST the batch, its body streamed (chunked): up to 256 MB never sits in memory.
        `headers`: the members' version and betas (`call_headers`)."""
        return await self._call("POST", PATH, content=body, headers=headers)

    async def retrieve(self, upstream_id: str) -> dict[str, Any]:
        return await self._call("GET", f"{PATH}/{upstream_id}")

    async def page(self, *, after_id: str | None = None, limit: int = 100) -> dict[str, Any]:
        """One page of the workspace's batches, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if after_id:
            params["after_id"] = after_id
        return await self._call("GET", PATH, params=params)

    async def cancel(self, upstream_id: str) -> dict[str, Any]:
        return await self._call("POST", f"{PATH}/{upstream_id}/cancel")

    async def _call(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        with _transport_errors():
            response = await self.http.request(method, url, **kwargs)
        if response.status_code != 200:
            raise classify_response(response)
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict) or ("id" not in body and "data" not in body):
            msg = "the Batches API answered 200 with a body that is not a batch"
            raise InvalidResponseError(
                msg, status_code=200, request_id=response.headers.get("request-id")
            )
        return body

    def results_url(self, batch: dict[str, Any]) -> str:
        """The batch's `results_url`, followed only on the API's own origin: msgq's API key
        goes with the request, so a URL elsewhere is replaced by the documented path."""
        url = str(batch.get("results_url") or "")
        base = urlsplit(str(self.http.base_url))
        given = urlsplit(url)
        if url and (given.scheme, given.netloc) == (base.scheme, base.netloc):
            return url
        return f"{PATH}/{batch['id']}/results"

    @contextlib.asynccontextmanager
    async def result_lines(self, url: str) -> AsyncIterator[AsyncIterator[str]]:
        """The results file, one JSONL line at a time (httpx reads it in chunks): a 100,000-line
        file is never held in memory."""
        with _transport_errors():
            async with self.http.stream(
                "GET", url, headers={"accept": "application/binary"}
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise classify_response(response)
                yield _non_empty(response.aiter_lines())


async def _non_empty(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    with _transport_errors():
        async for line in lines:
            if line.strip():
                yield line


@contextlib.contextmanager
def _transport_errors() -> Any:
    try:
        yield
    except httpx.TimeoutException as exc:
        msg = f"request timed out ({type(exc).__name__})"
        raise UnavailableError(msg, error_type="timeout") from None
    except httpx.TransportError as exc:
        msg = f"connection failed ({type(exc).__name__})"
        raise UnavailableError(msg, error_type="connection_error") from None
