"""The simulator's Message Batches routes: create, retrieve, list, cancel, delete, and results
as a streamed JSONL download from `results_url`; plus /_sim/batch-config and /_sim/batches.

Faults on the batch endpoints: `--batch-fault 429=0.1` (rates), or scripts under the keys
`batches:create`, `batches:retrieve`, `batches:list`, `batches:cancel`, `batches:results`
(`POST /_sim/script {"key": "batches:create", "responses": [...]}`). For create, an error
status or `drop` means the batch was not created, unless `create_first` (created, then the
error answered: a gateway's 502/504 after the API took it); otherwise it is created first, then
`delay_s` holds the answer and `drop_mid_body` loses it (created, answer never seen). For
results, `stream_stall_s` / `stream_cut` act halfway through the file.
"""

from __future__ import annotations

import asyncio
import random
import re
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any

import orjson
from aiohttp import web

from msgq.dev.simulator.answers import api_key_of, error_response
from msgq.dev.simulator.answers import gate as check_key_and_version
from msgq.dev.simulator.batch_engine import BatchConfig, SimBatch, new_batch_id
from msgq.dev.simulator.state import STATE, Scripted, SimState

MAX_BODY_BYTES = 256 * 1024 * 1024
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
FLUSH_LINES = 200


@dataclass
class BatchState:
    defaults: BatchConfig
    config: BatchConfig = field(init=False)
    batches: dict[str, SimBatch] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    requests: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.config = BatchConfig(
            **{f.name: getattr(self.defaults, f.name) for f in fields(self.defaults)}
        )
        self.batches.clear()
        self.calls.clear()
        self.by_status.clear()
        self.requests = 0
        self.rng.seed(0)

    def stats(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "by_status": {str(k): v for k, v in self.by_status.items()},
            "requests": self.requests,
            "batches": len(self.batches),
        }


BATCHES = web.AppKey("sim_batches", BatchState)


def _answer(
    status: int, body: Any, *, scripted: Scripted | None = None, request_id: str = ""
) -> web.Response:
    rid = request_id or "req_sim" + secrets.token_hex(12)
    if status != 200:
        message = (scripted.message if scripted else None) or str(body)
        error_type = scripted.error_type if scripted else None
        headers = scripted.headers if scripted else None
        return error_response(
            status, message, error_type=error_type, request_id=rid, headers=headers
        )
    return web.Response(
        body=orjson.dumps(body), content_type="application/json", headers={"request-id": rid}
    )


async def _gate(
    request: web.Request, op: str, *, hold: bool = True
) -> tuple[str, Scripted] | web.Response:
    """Auth, version and the endpoint's fault for this call: (api key, scripted answer).
    `hold=False`: a successful answer's `delay_s` is left to the caller (create)."""
    state, batches = request.app[STATE], request.app[BATCHES]
    batches.calls[op] += 1
    refused = check_key_and_version(
        request, state.config.api_key, "req_sim" + secrets.token_hex(12)
    )
    if refused is not None:
        return refused
    key = api_key_of(request)
    queue = state.scripts.get(f"batches:{op}")
    scripted = queue.popleft() if queue else _roll(batches)
    refuse = scripted.status != 200 and not (op == "create" and scripted.create_first)
    if scripted.delay_s and (hold or refuse or scripted.drop):
        await asyncio.sleep(scripted.delay_s)
    if scripted.drop:
        request.transport.close()  # type: ignore[union-attr]
        msg = "simulator dropped the connection on purpose"
        raise ConnectionResetError(msg)
    if refuse:
        return _answer(scripted.status, f"simulated {scripted.status}", scripted=scripted)
    return key, scripted


def _roll(batches: BatchState) -> Scripted:
    roll = batches.rng.random()
    for status, rate in sorted(batches.config.fault_rates.items()):
        if roll < rate:
            return Scripted(status=status, headers={"retry-after": "1"} if status == 429 else {})
        roll -= rate
    return Scripted()


def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


async def create(request: web.Request) -> web.StreamResponse:
    gate = await _gate(request, "create", hold=False)
    if isinstance(gate, web.Response):
        return _counted(request, gate)
    key, scripted = gate
    body = await _read_body(request)
    if isinstance(body, web.Response):
        return _counted(request, body)
    state, batches = request.app[STATE], request.app[BATCHES]
    batch = SimBatch(
        id=new_batch_id(),
        key=key,
        requests=[(r["custom_id"], r["params"]) for r in body],
        config=BatchConfig(
            **{f.name: getattr(batches.config, f.name) for f in fields(BatchConfig)}
        ),
        seed=state.config.seed,
        output_tokens=state.config.output_tokens,
        version=request.headers.get("anthropic-version"),
        betas=[
            name.strip()
            for value in request.headers.getall("anthropic-beta", [])
            for name in value.split(",")
            if name.strip()
        ],
    )
    batches.batches[batch.id] = batch
    batches.requests += len(batch.requests)
    if scripted.delay_s:
        await asyncio.sleep(scripted.delay_s)
    if scripted.drop_mid_body:
        request.transport.close()  # type: ignore[union-attr]
        msg = "simulator lost the create answer on purpose (the batch exists)"
        raise ConnectionResetError(msg)
    if scripted.status != 200:  # create_first: the batch exists, the answer says otherwise
        message = f"simulated {scripted.status} (the batch was created)"
        return _counted(request, _answer(scripted.status, message, scripted=scripted))
    return _counted(request, _answer(200, batch.view(_base_url(request), time.time())))


async def _read_body(request: web.Request) -> list[dict[str, Any]] | web.Response:
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(1 << 20):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return _answer(413, "request_too_large: a batch holds at most 256 MB")
        chunks.append(chunk)
    try:
        body = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        return _answer(400, "request body is not valid JSON")
    items = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(items, list) or not 1 <= len(items) <= 100_000:
        return _answer(400, "requests: 1 to 100,000 items are required")
    seen: set[str] = set()
    for n, item in enumerate(items):
        cid = item.get("custom_id") if isinstance(item, dict) else None
        if not isinstance(cid, str) or not CUSTOM_ID.match(cid) or cid in seen:
            return _answer(400, f"requests.{n}.custom_id: must be unique, 1-64 of [a-zA-Z0-9_-]")
        if not isinstance(item.get("params"), dict):
            return _answer(400, f"requests.{n}.params: must be an object")
        seen.add(cid)
    return items


def _counted(request: web.Request, response: web.Response) -> web.Response:
    request.app[BATCHES].by_status[response.status] += 1
    return response


def _owned(request: web.Request, key: str) -> SimBatch | web.Response:
    batch = request.app[BATCHES].batches.get(request.match_info["batch_id"])
    if batch is None or batch.key != key:
        return _answer(404, f"message batch {request.match_info['batch_id']} not found")
    return batch


async def retrieve(request: web.Request) -> web.Response:
    gate = await _gate(request, "retrieve")
    if isinstance(gate, web.Response):
        return _counted(request, gate)
    batch = _owned(request, gate[0])
    if isinstance(batch, web.Response):
        return _counted(request, batch)
    return _counted(request, _answer(200, batch.view(_base_url(request), time.time())))


async def list_batches(request: web.Request) -> web.Response:
    gate = await _gate(request, "list")
    if isinstance(gate, web.Response):
        return _counted(request, gate)
    limit = max(1, min(1000, int(request.query.get("limit", "20"))))
    mine = [b for b in request.app[BATCHES].batches.values() if b.key == gate[0]]
    mine.sort(key=lambda b: b.created_at, reverse=True)
    ids = [b.id for b in mine]
    start = 0
    if request.query.get("after_id") in ids:
        start = ids.index(request.query["after_id"]) + 1
    page = mine[start : start + limit]
    now, base = time.time(), _base_url(request)
    body = {
        "data": [b.view(base, now) for b in page],
        "has_more": start + limit < len(mine),
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
    }
    return _counted(request, _answer(200, body))


async def cancel(request: web.Request) -> web.Response:
    gate = await _gate(request, "cancel")
    if isinstance(gate, web.Response):
        return _counted(request, gate)
    batch = _owned(request, gate[0])
    if isinstance(batch, web.Response):
        return _counted(request, batch)
    now = time.time()
    if batch.cancel_at is None and not batch.ended(now):
        batch.cancel_at = now
    return _counted(request, _answer(200, batch.view(_base_url(request), now)))


async def delete(request: web.Request) -> web.Response:
    gate = await _gate(request, "delete")
    if isinstance(gate, web.Response):
        return _counted(request, gate)
    batch = _owned(request, gate[0])
    if isinstance(batch, web.Response):
        return _counted(request, batch)
    if not batch.ended(time.time()):
        return _counted(request, _answer(400, "a batch can be deleted once it has ended"))
    del request.app[BATCHES].batches[batch.id]
    return _counted(request, _answer(200, {"id": batch.id, "type": "message_batch_deleted"}))


async def results(request: web.Request) -> web.StreamResponse:
    gate = await _gate(request, "results")
    if isinstance(gate, web.Response):
        return _counted(request, gate)
    key, scripted = gate
    batch = _owned(request, key)
    if isinstance(batch, web.Response):
        return _counted(request, batch)
    if not batch.ended(time.time()):
        return _counted(request, _answer(400, "the batch has not ended; no results yet"))
    request.app[BATCHES].by_status[200] += 1
    response = web.StreamResponse(headers={"content-type": "application/binary"})
    await response.prepare(request)
    lines: list[bytes] = []
    for index in range(len(batch.requests)):
        if index == len(batch.requests) // 2 and (scripted.stream_stall_s or scripted.stream_cut):
            await response.write(b"".join(lines))
            lines = []
            await asyncio.sleep(scripted.stream_stall_s)
            if scripted.stream_cut:
                request.transport.close()  # type: ignore[union-attr]
                return response
        lines.append(orjson.dumps(batch.result(index)) + b"\n")
        if len(lines) >= FLUSH_LINES:
            await response.write(b"".join(lines))
            lines = []
    await response.write(b"".join(lines))
    await response.write_eof()
    return response


async def sim_batch_config(request: web.Request) -> web.Response:
    """`{"processing_s": 0.5, "errored_rate": 1.0, "error_type": "overloaded_error", ...}`:
    applies to batches created from now on."""
    batches = request.app[BATCHES]
    data = orjson.loads(await request.read())
    known = {f.name for f in fields(BatchConfig)}
    unknown = set(data) - known
    if unknown:
        return _answer(400, f"unknown batch setting(s): {sorted(unknown)}")
    for name, value in data.items():
        if name == "fault_rates":
            value = {int(k): float(v) for k, v in value.items()}
        setattr(batches.config, name, value)
    return _answer(200, {"config": {f: getattr(batches.config, f) for f in sorted(known)}})


async def sim_batches(request: web.Request) -> web.Response:
    """Every batch the simulator holds, with its custom_ids (what tests check duplicates in)."""
    now = time.time()
    data = [
        {
            "id": b.id,
            "created_at": b.created_at,
            "ended": b.ended(now),
            "custom_ids": [cid for cid, _ in b.requests],
            "anthropic_version": b.version,
            "betas": b.betas,
        }
        for b in request.app[BATCHES].batches.values()
    ]
    return _answer(200, {"data": data})


def add_batch_routes(app: web.Application, state: SimState, config: BatchConfig) -> None:
    app[STATE] = state
    app[BATCHES] = BatchState(config)
    app.router.add_post("/v1/messages/batches", create)
    app.router.add_get("/v1/messages/batches", list_batches)
    app.router.add_get("/v1/messages/batches/{batch_id}", retrieve)
    app.router.add_delete("/v1/messages/batches/{batch_id}", delete)
    app.router.add_post("/v1/messages/batches/{batch_id}/cancel", cancel)
    app.router.add_get("/v1/messages/batches/{batch_id}/results", results)
    app.router.add_post("/_sim/batch-config", sim_batch_config)
    app.router.add_get("/_sim/batches", sim_batches)
