"""`/v1/messages/batches`: the Anthropic Message Batches API, served by msgq's jobs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from msgq.batches import Batches, BatchMeta
from msgq.http.deps import Tenant, state_of
from msgq.http.errors import ApiError
from msgq.http.versions import Headers
from schemas.batches import BatchCreate, BatchPage, DeletedBatch, MessageBatch
from schemas.versions import version_violations

router = APIRouter(prefix="/v1/messages/batches", tags=["batches"])


def _batches(request: Request) -> Batches:
    return state_of(request).batches


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def _owned(request: Request, tenant: str, batch_id: str) -> BatchMeta:
    meta = await _batches(request).get(tenant, batch_id)
    if meta is None:
        raise ApiError(404, f"no message batch {batch_id!r}")
    return meta


@router.post("", summary="Create a Message Batch")
async def create_batch(
    body: BatchCreate, tenant: Tenant, request: Request, headers: Headers
) -> MessageBatch:
    """1-100,000 requests with unique custom_ids; each runs as an ordinary msgq job, sent with
    this call's anthropic-version and anthropic-beta (betas apply to a whole batch)."""
    version = headers.required_version(request)
    seen: set[str] = set()
    for n, item in enumerate(body.requests):
        if item.custom_id in seen:
            raise ApiError(400, f"custom_id {item.custom_id!r} is used more than once")
        seen.add(item.custom_id)
        _check_version_rules(n, item.params, version)
    batches = _batches(request)
    meta = await batches.create(
        tenant,
        body,
        anthropic_version=version,
        betas=headers.betas,
        workspace=headers.workspace_id,
        api_headers=headers.others,
    )
    return await batches.view(meta, base_url=_base_url(request))


def _check_version_rules(n: int, params: dict[str, Any], version: str) -> None:
    """The version's rules up front (a 400 naming the field); other problems of a request
    end that request `errored`, as the API reports them."""
    messages = params.get("messages")
    turns = [
        (str(m.get("role")), m.get("content"))
        for m in (messages if isinstance(messages, list) else [])
        if isinstance(m, dict)
    ]
    for field, message in version_violations(version, set(params), turns):
        raise ApiError(400, f"requests.{n}.params.{field}: {message}")


@router.get("", summary="List Message Batches, newest first")
async def list_batches(
    tenant: Tenant,
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    after_id: str | None = None,
    before_id: str | None = None,
) -> BatchPage:
    return await _batches(request).page(
        tenant, limit=limit, after_id=after_id, before_id=before_id, base_url=_base_url(request)
    )


@router.get("/{batch_id}", summary="Retrieve a Message Batch")
async def retrieve_batch(batch_id: str, tenant: Tenant, request: Request) -> MessageBatch:
    meta = await _owned(request, tenant, batch_id)
    return await _batches(request).view(meta, base_url=_base_url(request))


@router.get(
    "/{batch_id}/results",
    summary="Results as JSONL, once the batch has ended",
    response_class=StreamingResponse,
)
async def batch_results(batch_id: str, tenant: Tenant, request: Request) -> StreamingResponse:
    batches = _batches(request)
    meta = await _owned(request, tenant, batch_id)
    if (await batches.view(meta, base_url="")).processing_status != "ended":
        raise ApiError(400, "the batch has not ended yet")
    return StreamingResponse(batches.results(meta), media_type="application/x-jsonl")


@router.post("/{batch_id}/cancel", summary="Cancel a Message Batch")
async def cancel_batch(batch_id: str, tenant: Tenant, request: Request) -> MessageBatch:
    batches = _batches(request)
    meta = await batches.cancel(await _owned(request, tenant, batch_id))
    return await batches.view(meta, base_url=_base_url(request))


@router.delete("/{batch_id}", summary="Delete an ended Message Batch and its results")
async def delete_batch(batch_id: str, tenant: Tenant, request: Request) -> DeletedBatch:
    batches = _batches(request)
    meta = await _owned(request, tenant, batch_id)
    if (await batches.view(meta, base_url="")).processing_status != "ended":
        raise ApiError(400, "a batch can be deleted once it has ended; cancel it first")
    await batches.delete(meta)
    return DeletedBatch(id=batch_id)
