"""`POST /v1/jobs/{id}/retry`: re-run a tenant's failed or expired job, as `msgq retry` does.

Its own module so the jobs routes stay about submitting and reading; the rule of when a retry
can change the outcome lives in `msgq.jobs.retry_policy`, shared with the CLI and dashboard.
"""

from __future__ import annotations

import re

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from msgq.http.deps import State, Tenant, public_record
from msgq.http.errors import ApiError
from msgq.jobs.ids import scoped_id
from schemas import JOB_ID_PATTERN

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
_JOB_ID = re.compile(JOB_ID_PATTERN)


@router.post("/{job_id}/retry", summary="Re-run a failed or expired job with its kept request")
async def retry_job(job_id: str, tenant: Tenant, state: State) -> JSONResponse:
    """200 with the requeued record; 409 with the reason when a retry cannot change the
    outcome (a permanent error such as invalid_request_error, a batch member, or not ended)."""
    internal = scoped_id(tenant, job_id)
    record = await state.store.get(internal) if _JOB_ID.match(job_id) else None
    if record is None or record.tenant != tenant:
        raise ApiError(404, f"no job {job_id!r}")
    fresh, why_not = await state.client.retry_explained(internal)
    if fresh is None:
        raise ApiError(409, f"job {job_id!r} not retried: {why_not}")
    return JSONResponse(public_record(fresh))
