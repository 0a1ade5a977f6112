"""The JSON job serializer arq uses instead of pickle (pickle would run code from Redis)."""

from __future__ import annotations

import time
from typing import Any

import orjson

TASK_NAME = "run_message"
UNDECODABLE_KEY = "_undecodable"


def _default(value: Any) -> Any:
    # arq stores exceptions in failure results; keep their type and message, nothing executable.
    if isinstance(value, BaseException):
        return {"exception": type(value).__name__, "message": str(value)}
    return str(value)


def serialize(obj: Any) -> bytes:
    """Raises orjson.JSONEncodeError for integers beyond 64 bits (callers refuse those jobs)."""
    return orjson.dumps(obj, default=_default)


def deserialize(data: bytes, *, max_bytes: int = 64 * 1024 * 1024) -> dict[str, Any]:
    """Never raises: a payload that is not a JSON job becomes a job that the task fails cleanly.

    arq would otherwise fail such a job without our record ever being written, and a poller
    would wait forever on `queued`.
    """
    if len(data) > max_bytes:
        return _undecodable(f"job payload is {len(data)} bytes; the limit is {max_bytes}")
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return _undecodable("job payload is not valid JSON (msgq never accepts pickle)")
    if not isinstance(obj, dict):
        return _undecodable("job payload must be a JSON object")
    if "t" not in obj and "r" not in obj:
        return _undecodable("job payload has no arq fields (t, f, a, k, et)")
    if obj.get("f") != TASK_NAME and "r" not in obj:
        return _undecodable(f"unknown job function {str(obj.get('f'))[:64]!r}")
    if not isinstance(obj.get("k", {}), dict) or not isinstance(obj.get("a", []), list):
        return _undecodable("job payload: 'a' must be a list and 'k' an object")
    return obj


def _undecodable(reason: str) -> dict[str, Any]:
    return {
        "t": 1,
        "f": TASK_NAME,
        "a": [],
        "k": {UNDECODABLE_KEY: reason},
        "et": int(time.time() * 1000),
    }
