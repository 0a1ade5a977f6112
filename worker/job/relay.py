"""A drop-in stream's events, relayed as the worker receives them from the API.

`POST /v1/messages` with `stream: true` subscribes to the job's relay channel before it submits
the job, so the API process hears every event of every attempt. Each message is
`attempt\\nevent name\\nraw data` (bytes, no re-encoding: what the API sent is what the caller
gets). Before its events an attempt announces the API's request ID (`msgq_request_id`), so the
caller's `request-id` header can be the API's, as it would have been without msgq; an API
process of the previous release ignores it (it comes before any `message_start`), so workers
and API processes can be upgraded in either order. An attempt that fails after its first event
ends with a `msgq_failed` marker carrying the error, so the API process can tell a retry from a
slow answer without reading the record.

Best effort and cheap when nobody listens: the first PUBLISH that reaches no subscriber (the
caller hung up, or the job was submitted some other way) turns the relay off for the attempt.
Pings are not relayed; the API process sends its own while the stream is quiet.
"""

from __future__ import annotations

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from msgq.channels import publish
from msgq.errors import UpstreamError
from msgq.keys import RELAY_FAILED, RELAY_REQUEST_ID, Keyspace

log = structlog.get_logger("msgq.job")


class Relay:
    """`await relay(name, data)` per event (upstream's `on_event`); `await relay.close(exc)`."""

    def __init__(self, redis: Redis, keys: Keyspace, job_id: str, attempt: int) -> None:
        self.redis = redis
        self.keys, self.channel = keys, keys.relay_channel(job_id)
        self.prefix = f"{attempt}\n".encode()
        self.on = True
        self.started = False
        self.finished = False

    async def opened(self, request_id: str | None) -> None:
        """The attempt's answer has started: announce the API's request ID (a plain token
        only: it goes into the caller's headers)."""
        if not (self.on and request_id and len(request_id) <= 200 and request_id.isascii()):
            return
        if request_id.isprintable() and " " not in request_id:
            await self._publish(RELAY_REQUEST_ID, request_id.encode())

    async def __call__(self, name: str, data: str) -> None:
        if not self.on or name in ("ping", "error"):
            return  # an `error` event is the attempt's failure: close() reports it
        self.started = True
        self.finished = name == "message_stop"
        await self._publish(name, data.encode())

    async def _publish(self, name: str, data: bytes) -> None:
        try:
            heard = await publish(
                self.redis, self.keys, self.channel, self.prefix + name.encode() + b"\n" + data
            )
        except RedisError as exc:
            log.warning("job.relay_unpublished", error=type(exc).__name__)
            heard = 0
        self.on = heard > 0

    async def close(self, failure: BaseException | None) -> None:
        """After the attempt: a failure after the first event is announced to the listener."""
        if not (self.on and self.started and not self.finished):
            return
        error = {"type": "api_error", "message": "the answer was interrupted"}
        if isinstance(failure, UpstreamError):
            error = {"type": failure.error_type, "message": failure.message}
        await self._publish(RELAY_FAILED, orjson.dumps(error))
