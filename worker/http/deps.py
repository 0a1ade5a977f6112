"""What the HTTP routes share: app state, tenant auth, the error shape, done-notifications."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import structlog
from fastapi import Request
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from redis.exceptions import RedisError

from schemas import JobRecord
from worker.client import Client
from worker.http.auth import tenant_for
from worker.settings import Settings
from worker.store import DONE_CHANNEL

log = structlog.get_logger("msgq.api")


class ApiError(Exception):
    """Answered as `{"type": "error", "error": {"type", "message"}}` with its status."""

    def __init__(
        self, status: int, error_type: str, message: str, errors: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.error_type, self.message, self.errors = (
            status,
            error_type,
            message,
            errors,
        )


def error_response(exc: ApiError) -> JSONResponse:
    error: dict[str, Any] = {"type": exc.error_type, "message": exc.message}
    if exc.errors is not None:
        error["errors"] = exc.errors
    return JSONResponse({"type": "error", "error": error}, status_code=exc.status)


class DoneNotifier:
    """One pub/sub subscription per API process wakes every long-poll waiting on a job."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.waiters: dict[str, set[asyncio.Future[None]]] = {}
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(DONE_CHANNEL)
                    delay = 0.1
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._wake(message["data"].decode())
            except RedisError as exc:
                log.warning("api.notifier_reconnecting", error=type(exc).__name__, delay_s=delay)
                self._wake_all()  # let waiters re-read rather than miss an ending
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _wake(self, job_id: str) -> None:
        for future in self.waiters.pop(job_id, set()):
            if not future.done():
                future.set_result(None)

    def _wake_all(self) -> None:
        for job_id in list(self.waiters):
            self._wake(job_id)

    async def wait(self, client: Client, job_id: str, timeout_s: float) -> JobRecord | None:
        """The record once terminal, or as it stands after `timeout_s`."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(job_id, set()).add(future)
        try:
            record = await client.store.get(job_id)  # after registering: no ending is missed
            if record is None or record.status.terminal:
                return record
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(future, timeout_s)
            return await client.store.get(job_id)
        finally:
            self.waiters.get(job_id, set()).discard(future)


@dataclass
class AppState:
    settings: Settings
    keys: dict[str, str]
    client: Client
    notifier: DoneNotifier
    extra: dict[str, Any] = field(default_factory=dict)


def state_of(request: Request) -> AppState:
    state: AppState = request.app.state.msgq
    return state


def require_tenant(request: Request) -> str:
    """x-api-key or Authorization: Bearer → tenant; 401 in the API's shape otherwise."""
    presented = request.headers.get("x-api-key")
    bearer = request.headers.get("authorization", "")
    if not presented and bearer.lower().startswith("bearer "):
        presented = bearer[7:].strip()
    tenant = tenant_for(state_of(request).keys, presented)
    if tenant is None:
        message = "missing API key" if not presented else "invalid API key"
        raise ApiError(401, "authentication_error", message)
    return tenant


def public_id(record: JobRecord) -> str:
    """The ID the tenant chose or was given: internal IDs carry a `tenant:` prefix."""
    prefix = f"{record.tenant}:" if record.tenant else ""
    return record.id[len(prefix) :] if prefix and record.id.startswith(prefix) else record.id


def public_record(record: JobRecord) -> dict[str, Any]:
    data = record.model_dump(mode="json", exclude={"tenant"})
    data["id"] = public_id(record)
    return data
