"""Tool use, played: with `tools` and a `tool_choice` of `any` or `tool`, the simulated model
calls a tool, as the API's model must then, with an input built from the tool's `input_schema`.
So an agent loop (call, run the tool, send the `tool_result`) runs against the simulator with no
scripting. `auto` and `none` keep the text answer: the simulator has no judgement to play.

The input is deterministic (the request and seed pick the values) and fits the schema's common
vocabulary: `type` (one or several), `properties` with `required` (every listed property is
filled), `enum`, `const`, `default`, `anyOf`/`oneOf`/`allOf` (the first branch, merged for
allOf), `items`/`minItems`, string `minLength`/`maxLength`/`format` (date-time, date, email,
uri, uuid), number `minimum`/`maximum`/`exclusiveMinimum`/`multipleOf`, and local `$ref`s into
`$defs`/`definitions`. Not `pattern` (a string that matches an arbitrary regex needs a solver).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

MAX_DEPTH = 8  # a recursive schema ($ref to itself) ends in an empty object or array
FORMATS = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "00:00:00Z",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "192.0.2.1",
}


def chosen_tool(body: dict[str, Any], seed: int) -> dict[str, Any] | None:
    """The custom tool the model must call (one with an `input_schema`), or None for text.

    `{"type": "tool", "name": N}` names it; `{"type": "any"}` leaves the pick to the model:
    here one chosen by the request's digest, so the same request calls the same tool.
    """
    choice, tools = body.get("tool_choice"), body.get("tools")
    if not isinstance(choice, dict) or not isinstance(tools, list):
        return None
    custom = [t for t in tools if isinstance(t, dict) and isinstance(t.get("input_schema"), dict)]
    if choice.get("type") == "tool":
        return next((t for t in custom if t.get("name") == choice.get("name")), None)
    if choice.get("type") == "any" and custom:
        return custom[_digest(body, seed)[0] % len(custom)]
    return None


def tool_use_block(tool: dict[str, Any], body: dict[str, Any], seed: int) -> dict[str, Any]:
    """The `tool_use` block calling `tool`, its ID and input derived from the request."""
    digest = _digest(body, seed)
    schema = tool["input_schema"]
    try:
        value = Instance(schema, digest).of(schema, 0)
    except (TypeError, ValueError, AttributeError):  # a schema too odd to read: the API's call
        value = {}
    return {
        "type": "tool_use",
        "id": "toolu_sim" + digest.hex()[:24],
        "name": tool["name"],
        "input": value if isinstance(value, dict) else {},
    }


def _digest(body: dict[str, Any], seed: int) -> bytes:
    asked = {k: v for k, v in body.items() if k != "stream"}  # streamed or not: the same call
    return hashlib.sha256(orjson.dumps([seed, "tool", asked], option=orjson.OPT_SORT_KEYS)).digest()


class Instance:
    """Builds one value that fits a JSON Schema; `digest` varies the free choices."""

    def __init__(self, root: dict[str, Any], digest: bytes) -> None:
        self.root, self.digest, self.used = root, digest, 0

    def of(self, schema: Any, depth: int) -> Any:
        if not isinstance(schema, dict) or depth > MAX_DEPTH:
            return {}
        if "$ref" in schema:
            return self.of(self._resolve(str(schema["$ref"])), depth + 1)
        for key in ("const", "default"):
            if key in schema:
                return schema[key]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return schema["enum"][self._pick(len(schema["enum"]))]
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                return self.of(schema[key][0], depth + 1)
        if isinstance(schema.get("allOf"), list):
            merged = _merge([schema, *schema["allOf"]])
            return self.of(merged, depth + 1)
        return self._typed(schema, _type_of(schema), depth)

    def _typed(self, schema: dict[str, Any], kind: str, depth: int) -> Any:
        if kind == "object":
            properties = schema.get("properties") or {}
            names = schema.get("required") or list(properties)[:1]
            return {str(n): self.of(properties.get(n, {}), depth + 1) for n in names}
        if kind == "array":
            count = max(int(schema.get("minItems", 1)), 0)
            count = min(count, int(schema.get("maxItems", count)))
            return [self.of(schema.get("items", {}), depth + 1) for _ in range(count)]
        if kind == "string":
            return self._string(schema)
        if kind in ("integer", "number"):
            return _number(schema, kind, self._pick(10))
        if kind == "boolean":
            return self._pick(2) == 1
        return None

    def _string(self, schema: dict[str, Any]) -> str:
        if schema.get("format") in FORMATS:
            return FORMATS[str(schema["format"])]
        word = "sim-" + self.digest.hex()[self.used % 48 : self.used % 48 + 8]
        self.used += 1
        low, high = int(schema.get("minLength", 0)), int(schema.get("maxLength", 1 << 16))
        word = word.ljust(low, "x")
        return word[: max(low, min(high, len(word)))]

    def _pick(self, n: int) -> int:
        self.used += 1
        return self.digest[self.used % len(self.digest)] % n

    def _resolve(self, ref: str) -> Any:
        node: Any = self.root
        for part in ref.removeprefix("#").strip("/").split("/"):
            if not part:
                continue
            name = part.replace("~1", "/").replace("~0", "~")
            node = node.get(name, {}) if isinstance(node, dict) else {}
        return node


def _type_of(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"] or ["null"]
        kind = kinds[0]
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    return "array" if "items" in schema else "string"


def _number(schema: dict[str, Any], kind: str, offset: int) -> int | float:
    low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
    high = schema.get("maximum", schema.get("exclusiveMaximum", low + 100))
    step = schema.get("multipleOf", 1)
    value = low + offset * step
    if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        value += step
    while value > high or ("exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]):
        value -= step
    return int(value) if kind == "integer" and float(value).is_integer() else value


def _merge(schemas: list[Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {"properties": {}, "required": []}
    for part in schemas:
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if key == "properties" and isinstance(value, dict):
                merged["properties"].update(value)
            elif key == "required" and isinstance(value, list):
                merged["required"] += [n for n in value if n not in merged["required"]]
            elif key != "allOf":
                merged[key] = value
    return merged
