"""The dashboard's batches: the list with progress bars, a batch's page, its results download."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from msgq.batches import Batches
from msgq.http.deps import state_of
from msgq.http.ui.batch_views import batch_page, batch_row
from msgq.http.ui.common import not_found, query_of, tenants_in_scope, ui_router
from msgq.http.ui.render import html, message
from msgq.http.ui.session import Viewer

router = ui_router()


@router.get("/batches")
async def batches_page(request: Request, session: Viewer) -> HTMLResponse:
    before = request.query_params.get("before", "")
    before_ms = int(before) if before.isdigit() else None
    tenants = tenants_in_scope(request, session)
    rows, next_before = await batch_page(
        state_of(request).redis, state_of(request).settings.keys, tenants, before_ms=before_ms
    )
    older = query_of(before=next_before) if next_before is not None else None
    return html(request, "batches.html", session, rows=rows, older=older)


@router.get("/batches/{batch_id}")
async def batch_detail(request: Request, session: Viewer, batch_id: str) -> Response:
    row = await batch_row(
        state_of(request).redis, state_of(request).settings.keys, batch_id, tenant=session.scope
    )
    if row is None:
        return not_found(request, session, "batch")
    return html(request, "batch.html", session, row=row, jobs_query=query_of(batch=batch_id))


@router.get("/batches/{batch_id}/results")
async def batch_results(request: Request, session: Viewer, batch_id: str) -> Response:
    """The results JSONL once the batch has ended, as a download (the session's own batches)."""
    state = state_of(request)
    row = await batch_row(state.redis, state.settings.keys, batch_id, tenant=session.scope)
    if row is None:
        return not_found(request, session, "batch")
    if row.status != "ended":
        return message(request, session, 409, "Not yet", "Results are ready once the batch ends.")
    lines = Batches(state.redis, state.store, state.settings).results(row.meta)
    disposition = f'attachment; filename="{row.meta.id}_results.jsonl"'
    headers = {"content-disposition": disposition, "cache-control": "no-store"}
    return StreamingResponse(lines, media_type="application/x-jsonl", headers=headers)
