"""`/v1/messages/batches`: the Anthropic Message Batches API, served by msgq's jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from msgq.batches import Batches, BatchMeta
from msgq.http.deps import Tenant, state_of
from msgq.http.errors import ApiError
from schemas.batches import BatchCreate, BatchPage, DeletedBatch, MessageBatch

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
async def create_batch(body: BatchCreate, tenant: Tenant, request: Request) -> MessageBatch:
    """1-100,000 requests with unique custom_ids; each runs as an ordinary msgq job."""
    seen: set[str] = set()
    for item in body.requests:
        if item.custom_id in seen:
            raise ApiError(400, f"custom_id {item.custom_id!r} is used more than once")
        seen.add(item.custom_id)
    batches = _batches(request)
    meta = await batches.create(tenant, body)
    return await batches.view(meta, base_url=_base_url(request))


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
