"""`/v1/jobs`: enqueue, read (with long poll), list and cancel a tenant's jobs."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from msgq.http.deps import State, Tenant, public_record
from msgq.http.errors import ApiError
from msgq.http.versions import Headers
from msgq.jobs.ids import public_id, scoped_id
from schemas import JOB_ID_PATTERN, JobRecord, JobStatus
from schemas.api import JobCreate, JobPage

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
_JOB_ID = re.compile(JOB_ID_PATTERN)


def _owned(record: JobRecord | None, tenant: str, job_id: str) -> JobRecord:
    """Another tenant's job answers 404, exactly like a job that does not exist."""
    if record is None or record.tenant != tenant:
        raise ApiError(404, f"no job {job_id!r}")
    return record


def _internal(tenant: str, job_id: str) -> str:
    if not _JOB_ID.match(job_id):
        raise ApiError(404, f"no job {job_id!r}")
    return scoped_id(tenant, job_id)


@router.post("", status_code=202, summary="Enqueue a Messages request")
async def create_job(
    body: JobCreate, tenant: Tenant, state: State, headers: Headers, request: Request
) -> JSONResponse:
    """202 with the record; 200 with the existing record when `id` was seen before.

    The job's API version and betas: the JSON fields, else the `anthropic-version` and
    `anthropic-beta` headers; with neither, the fleet's default version, which the record
    names (this is msgq's own route: the drop-in and Batches routes keep the API's rule
    that the header is required). A W3C `traceparent` header puts the job in the caller's
    trace."""
    fleet_version = await state.client.fleet_anthropic_version()
    version = headers.required_version(request, body.anthropic_version, fallback=fleet_version)
    job = await state.client.submit(
        body.request,
        job_id=body.id,
        metadata=body.metadata,
        deadline=body.deadline,
        max_attempts=body.max_attempts,
        tenant=tenant,
        lane=body.lane,
        callback_url=body.callback_url,
        priority=body.priority,
        anthropic_version=version,
        betas=body.betas if body.betas is not None else headers.betas,
        workspace_id=headers.workspace_id,
        api_headers=headers.others,
        traceparent=request.headers.get("traceparent"),
        tracestate=request.headers.get("tracestate"),
    )
    return JSONResponse(public_record(job.record), status_code=202 if job.created else 200)


@router.get("", summary="List the tenant's jobs, newest first")
async def list_jobs(
    tenant: Tenant,
    state: State,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    after_id: str | None = None,
) -> JobPage:
    after = _internal(tenant, after_id) if after_id else None
    records, more = await state.store.page(
        tenant=tenant, status=status, limit=limit, after_id=after
    )
    return JobPage.model_validate(
        {
            "data": [public_record(r) for r in records],
            "has_more": more,
            "first_id": public_id(records[0]) if records else None,
            "last_id": public_id(records[-1]) if records else None,
        }
    )


@router.get("/{job_id}", summary="A job's record; ?wait=N long-polls until it ends")
async def get_job(
    job_id: str,
    tenant: Tenant,
    state: State,
    wait: Annotated[float, Query(ge=0, le=60)] = 0,
) -> JSONResponse:
    internal = _internal(tenant, job_id)
    record = _owned(await state.store.get(internal), tenant, job_id)
    if wait > 0 and not record.status.terminal:
        record = _owned(await state.endings.wait(internal, wait), tenant, job_id)
    return JSONResponse(public_record(record))


@router.delete("/{job_id}", summary="Cancel a queued, retrying or in-progress job")
async def cancel_job(job_id: str, tenant: Tenant, state: State) -> JSONResponse:
    internal = _internal(tenant, job_id)
    _owned(await state.store.get(internal), tenant, job_id)
    record = await state.client.cancel(internal)
    # 200 either way; the header tells a cancel apart from a job that had already ended.
    outcome = "canceled" if record.status is JobStatus.CANCELED else "cancel-requested"
    if record.status.terminal and record.status is not JobStatus.CANCELED:
        outcome = "already-ended"
    return JSONResponse(public_record(record), headers={"msgq-cancel": outcome})
