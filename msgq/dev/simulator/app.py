"""The simulator's HTTP routes: /v1/messages, count_tokens, and the /_sim/* inspection routes."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from msgq.dev.simulator.answers import (
    api_key_of,
    error_response,
    gate,
    new_request_id,
)
from msgq.dev.simulator.answers import json_response as _json
from msgq.dev.simulator.batch_engine import BatchConfig
from msgq.dev.simulator.batches import BATCHES, add_batch_routes
from msgq.dev.simulator.cache import CacheUse, segments
from msgq.dev.simulator.checks import refusal
from msgq.dev.simulator.models import add_model_routes, min_cache_tokens
from msgq.dev.simulator.replies import (
    build_message,
    count_input_tokens,
    item_tokens,
    reported_output_tokens,
)
from msgq.dev.simulator.state import STATE, Scripted, SimConfig, SimState, mask_key
from msgq.dev.simulator.streaming import stream_answer
from msgq.dev.simulator.versions import version_refusal
from schemas import field_errors, summarize, validate_request

__all__ = ["api_key_of", "build_app", "error_response"]  # batches and older callers import these


async def _read_checked(
    request: web.Request, state: SimState, request_id: str
) -> dict[str, Any] | web.Response:
    """Auth, version header and body checks every Messages route shares."""
    refused = gate(request, state.config.api_key, request_id)
    if refused is not None:
        return refused
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return error_response(400, "request body is not valid JSON", request_id=request_id)
    if not isinstance(body, dict):
        return error_response(400, "request body must be a JSON object", request_id=request_id)
    return body


async def messages(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    request_id = new_request_id()
    entry = _log_request(state, request)
    entry["request_id"] = request_id
    checked = await _read_checked(request, state, request_id)
    if isinstance(checked, dict):
        entry["body"] = checked
        state.by_model[str(checked.get("model"))] += 1
        response = await _answer(request, state, checked, request_id, entry)
    else:
        response = checked
    entry["status"] = response.status
    if entry["generation"] == state.generation:
        state.by_status[response.status] += 1
    return response


def _log_request(state: SimState, request: web.Request) -> dict[str, Any]:
    state.received += 1
    headers = {k.lower(): v for k, v in request.headers.items()}
    if "x-api-key" in headers:
        headers["x-api-key"] = mask_key(headers["x-api-key"])
    if "authorization" in headers:
        scheme, _, credential = headers["authorization"].partition(" ")
        headers["authorization"] = f"{scheme} {mask_key(credential.strip())}"
    # The header may repeat (the Files API allows it) and each may list several, comma-separated.
    betas = [
        name.strip()
        for value in request.headers.getall("anthropic-beta", [])
        for name in value.split(",")
        if name.strip()
    ]
    entry: dict[str, Any] = {
        "time": time.time(),
        "path": request.path,
        "headers": headers,
        "betas": betas,
        "latency": None,
        "body": None,
        "status": None,
        "generation": state.generation,
        "response": None,
    }
    state.log.append(entry)
    return entry


async def _answer(
    request: web.Request,
    state: SimState,
    body: dict[str, Any],
    request_id: str,
    entry: dict[str, Any],
) -> web.StreamResponse:
    key = api_key_of(request)
    scripted = state.next_scripted(key) or state.roll_fault() or Scripted()
    if scripted.delay_s:
        await asyncio.sleep(scripted.delay_s)
    if scripted.drop:
        request.transport.close()  # type: ignore[union-attr]
        msg = "simulator dropped the connection on purpose"
        raise ConnectionResetError(msg)
    if scripted.status != 200:
        message = scripted.message or f"simulated {scripted.status}"
        return error_response(
            scripted.status,
            message,
            error_type=scripted.error_type,
            request_id=request_id,
            headers=scripted.headers,
            error_code=scripted.error_code,
        )
    invalid = _invalid(body, request_id, request.headers.get("anthropic-version"))
    if invalid is not None:
        return invalid
    cache = _cache_plan(state, body)
    refused = _admit(state, body, cache, request_id)
    if refused is not None:
        return refused
    message_body = (
        scripted.body
        if scripted.body is not None
        else build_message(
            body,
            seed=state.config.seed,
            request_id=request_id,
            output_tokens=state.output_tokens(scripted),
            cache=cache,
        )
    )
    entry["response"] = message_body
    output_tokens = reported_output_tokens(message_body)
    state.limits.produced(output_tokens)
    timing = state.timing(scripted)
    entry["latency"] = timing.as_log(output_tokens)
    if body.get("stream") is True:
        return await stream_answer(request, state, scripted, message_body, request_id, timing)
    delay_ms = timing.total_ms(output_tokens)
    if delay_ms:
        await asyncio.sleep(delay_ms / 1000)
    payload = orjson.dumps(message_body)
    if scripted.malformed:
        payload = payload[: len(payload) // 2]
    if scripted.drop_mid_body:
        return await _drop_mid_body(request, payload, request_id)
    return web.Response(
        status=200,
        body=payload,
        content_type="application/json",
        headers={"request-id": request_id, **state.limits.headers(), **scripted.headers},
    )


def _cache_plan(state: SimState, body: dict[str, Any]) -> CacheUse:
    model = str(body.get("model", ""))
    parts = segments(body, lambda item, is_tool: item_tokens(item, model, is_tool))
    return state.cache.plan(model, parts, min_tokens=min_cache_tokens(model), now=time.time())


def _admit(
    state: SimState, body: dict[str, Any], cache: CacheUse, request_id: str
) -> web.Response | None:
    """Take the request from the buckets (cache reads are free of ITPM), or answer the 429."""
    uncached = max(0, count_input_tokens(body) - cache.read)
    refused = state.limits.admit(uncached)
    if refused is None:
        state.cache.commit(cache, time.time())
        return None
    headers = {**state.limits.headers(), "retry-after": str(max(1, math.ceil(refused.wait_s)))}
    message = "Number of requests or tokens has exceeded your rate limit"
    if refused.reason == "acceleration":
        message = (
            "Your organization's traffic increased too sharply (acceleration limit); "
            "ramp up gradually"
        )
    return error_response(429, message, request_id=request_id, headers=headers)


def _invalid(body: dict[str, Any], request_id: str, version: str | None) -> web.Response | None:
    """The API's refusal of a body it will not run: unknown parameter or model, a field this
    API version removed, bad fields."""
    removed = version_refusal(body, version)
    if removed is not None:
        return error_response(400, removed, request_id=request_id)
    refused = refusal(body)
    if refused is not None:
        return error_response(refused[0], refused[1], request_id=request_id)
    try:
        validate_request(body)
    except ValidationError as exc:
        message = summarize(field_errors(exc, body), 3)
        return error_response(400, message, request_id=request_id)
    return None


async def _drop_mid_body(
    request: web.Request, payload: bytes, request_id: str
) -> web.StreamResponse:
    response = web.StreamResponse(
        status=200, headers={"request-id": request_id, "content-type": "application/json"}
    )
    response.content_length = len(payload)
    await response.prepare(request)
    await response.write(payload[: len(payload) // 2])
    request.transport.close()  # type: ignore[union-attr]
    msg = "simulator dropped the connection mid-body on purpose"
    raise ConnectionResetError(msg)


async def count_tokens(request: web.Request) -> web.Response:
    state = request.app[STATE]
    request_id = new_request_id()
    checked = await _read_checked(request, state, request_id)
    if not isinstance(checked, dict):
        return checked
    removed = version_refusal(checked, request.headers.get("anthropic-version"))
    if removed is not None:
        return error_response(400, removed, request_id=request_id)
    refused = refusal(checked)
    if refused is not None:
        return error_response(refused[0], refused[1], request_id=request_id)
    return _json({"input_tokens": count_input_tokens(checked)}, request_id=request_id)


async def sim_stats(request: web.Request) -> web.Response:
    # `received` counts /v1/messages only; the Batches endpoints are counted under "batches".
    return _json({**request.app[STATE].stats(), "batches": request.app[BATCHES].stats()})


async def sim_requests(request: web.Request) -> web.Response:
    limit = int(request.query.get("limit", "100"))
    entries = list(request.app[STATE].log)[-limit:] if limit > 0 else []
    return _json({"requests": entries})


async def sim_script(request: web.Request) -> web.Response:
    """`{"responses": [{"status": 529}, {"status": 200}], "key": "optional api key"}`."""
    state = request.app[STATE]
    data = orjson.loads(await request.read())
    try:
        responses = [Scripted.model_validate(r) for r in data.get("responses", [])]
    except ValidationError as exc:
        return _json({"error": field_errors(exc, data)}, status=400)
    queue = state.scripts.setdefault(str(data.get("key") or "*"), deque())
    queue.extend(responses)
    return _json({"queued": len(queue)})


async def sim_reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    request.app[BATCHES].reset()
    return _json({"reset": True})


def build_app(
    config: SimConfig | None = None, batch_config: BatchConfig | None = None
) -> web.Application:
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app[STATE] = SimState(config or SimConfig())
    add_batch_routes(app, app[STATE], batch_config or BatchConfig())
    add_model_routes(app)
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    app.router.add_get("/_sim/stats", sim_stats)
    app.router.add_get("/_sim/requests", sim_requests)
    app.router.add_post("/_sim/script", sim_script)
    app.router.add_post("/_sim/reset", sim_reset)
    return app
