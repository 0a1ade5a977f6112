"""The arq task: validate → call upstream → store → log; and the worker's start-up/shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import structlog
from arq import Retry
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from schemas import (
    JobError,
    JobRecord,
    JobSpec,
    JobStatus,
    JobUsage,
    field_errors,
    validate_request,
)
from worker import transitions
from worker.backoff import retry_delay_s
from worker.errors import UnavailableError, UpstreamError
from worker.logs import register_secret
from worker.pricing import cost_usd
from worker.serialization import UNDECODABLE_KEY
from worker.settings import Settings
from worker.store import JobStore, in_progress_key, utcnow
from worker.upstream import UpstreamReply, build_client, send_message

log = structlog.get_logger("msgq.job")


@dataclass
class Deps:
    """What every job needs, built once per worker process and carried in arq's ctx."""

    settings: Settings
    store: JobStore
    http: httpx.AsyncClient
    redis: Redis


async def startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    if settings.anthropic_api_key is not None:
        register_secret(settings.anthropic_api_key.get_secret_value())
    store = JobStore(ctx["redis"], queue_name=settings.queue_name, retention_s=settings.retention_s)
    ctx["msgq"] = Deps(settings, store, build_client(settings), ctx["redis"])
    log.info("worker.started", base_url=settings.anthropic_base_url, max_jobs=settings.max_jobs)


async def shutdown(ctx: dict[str, Any]) -> None:
    deps: Deps | None = ctx.get("msgq")
    if deps is not None:
        await deps.http.aclose()
    log.info("worker.stopped")


async def run_message(ctx: dict[str, Any], **kwargs: Any) -> None:
    """The arq task. Returns nothing: the job's outcome lives in its record, not in arq's result."""
    deps: Deps = ctx["msgq"]
    job_id: str = ctx["job_id"]
    structlog.contextvars.bind_contextvars(job_id=job_id)
    try:
        async with heartbeat(deps.redis, job_id, deps.settings.lock_s):
            await _run(deps, job_id, kwargs, enqueued_at=ctx["enqueue_time"])
    except asyncio.CancelledError:
        # Either an operator's cancel (arq abort) or a worker shutting down mid-attempt.
        await asyncio.shield(transitions.release_after_shutdown(deps.store, job_id))
        raise
    finally:
        structlog.contextvars.unbind_contextvars("job_id", "latency_ms")


async def _run(deps: Deps, job_id: str, kwargs: dict[str, Any], *, enqueued_at: datetime) -> None:
    spec, problem = _parse_spec(kwargs)
    record = await deps.store.ensure(
        transitions.new_record(
            job_id, spec, created_at=enqueued_at, default_max_attempts=deps.settings.max_attempts
        )
    )
    if record.status.terminal:
        log.info("job.duplicate_skipped", status=record.status.value)
        return
    if spec is None or problem is not None:
        await transitions.finish(deps.store, job_id, JobStatus.FAILED, error=problem)
        return
    if await _ended_before_sending(deps, record, spec):
        return
    record = await transitions.begin_attempt(deps.store, job_id) or record
    if record.status is not JobStatus.IN_PROGRESS:
        return
    log.info("job.started", attempt=record.attempts, model=record.model)
    try:
        async with asyncio.timeout(deps.settings.job_timeout_s):
            reply = await send_message(deps.http, spec.request)
    except TimeoutError:
        await _handle_failure(deps, record, UnavailableError("attempt exceeded job_timeout_s"))
    except UpstreamError as exc:
        await _handle_failure(deps, record, exc)
    else:
        await _succeed(deps, record, reply)


def _parse_spec(kwargs: dict[str, Any]) -> tuple[JobSpec | None, JobError | None]:
    if UNDECODABLE_KEY in kwargs:
        return None, JobError(type="validation_error", message=str(kwargs[UNDECODABLE_KEY]))
    try:
        return JobSpec.model_validate(kwargs), None
    except ValidationError as exc:
        message = "job payload does not match the msgq job format"
        return None, JobError(
            type="validation_error", message=message, errors=field_errors(exc, kwargs)
        )


async def _ended_before_sending(deps: Deps, record: JobRecord, spec: JobSpec) -> bool:
    """Deadline, validation and spent attempts all end a job without calling the API."""
    store, job_id = deps.store, record.id
    if record.deadline is not None and utcnow() >= record.deadline:
        await transitions.finish(store, job_id, JobStatus.EXPIRED)
        return True
    try:
        request = validate_request(
            spec.request,
            max_image_bytes=deps.settings.max_image_bytes,
            in_batch=record.batch_id is not None,
        )
    except ValidationError as exc:
        errors = field_errors(exc, spec.request)
        message = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:5])
        error = JobError(type="validation_error", message=message, errors=errors)
        await transitions.finish(store, job_id, JobStatus.FAILED, error=error)
        return True
    if record.attempts >= record.max_attempts:
        # A worker died during the last allowed call: do not make one more.
        error = record.error or JobError(type="attempts_exhausted", message="no attempts left")
        await transitions.finish(store, job_id, JobStatus.FAILED, error=error)
        return True
    if request.model_extra:
        log.info("request.unknown_parameters", names=sorted(request.model_extra))
    return False


async def _handle_failure(deps: Deps, record: JobRecord, exc: UpstreamError) -> None:
    error = JobError.model_validate(exc.as_record_error())
    if not exc.retryable or record.attempts >= record.max_attempts:
        await transitions.finish(deps.store, record.id, JobStatus.FAILED, error=error)
        return
    s = deps.settings
    delay_s = retry_delay_s(
        record.attempts,
        exc.retry_after_s,
        base_s=s.backoff_base_s,
        factor=s.backoff_factor,
        max_s=s.backoff_max_s,
    )
    stored = await transitions.schedule_retry(deps.store, record.id, delay_s=delay_s, error=error)
    if stored is not None and stored.status is JobStatus.RETRYING:
        # arq re-queues the job `delay_s` from now; no worker slot is held while it waits.
        raise Retry(defer=delay_s)


async def _succeed(deps: Deps, record: JobRecord, reply: UpstreamReply) -> None:
    structlog.contextvars.bind_contextvars(latency_ms=round(reply.latency_ms, 1))
    usage: dict[str, Any] = reply.message.get("usage") or {}
    model = str(reply.message.get("model") or record.model or "")
    await transitions.finish(
        deps.store,
        record.id,
        JobStatus.SUCCEEDED,
        result=reply.message,
        usage=JobUsage(
            input_tokens=int(usage.get("input_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0),
            cache_creation_input_tokens=int(usage.get("cache_creation_input_tokens") or 0),
            cache_read_input_tokens=int(usage.get("cache_read_input_tokens") or 0),
        ),
        cost_usd=cost_usd(record.model or model, usage, deps.settings.prices_file),
        upstream_request_id=reply.request_id,
        error=None,
    )


@contextlib.asynccontextmanager
async def heartbeat(redis: Redis, job_id: str, lock_s: float) -> AsyncIterator[None]:
    """Keep arq's in-progress lock short and alive: a killed worker's job is free in ~lock_s."""

    async def beat() -> None:
        key = in_progress_key(job_id)
        while True:
            try:
                await redis.pexpire(key, int(lock_s * 1000))
            except RedisError as exc:
                log.warning("job.heartbeat_failed", error=type(exc).__name__)
            await asyncio.sleep(lock_s / 3)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
