"""API versions (`anthropic-version`) msgq knows, and the body rules that differ between them.

2023-06-01 keeps the rules it always had. 2026-10-21 (reference §12.1) refuses `temperature`,
`top_p` and `top_k` whenever present (even at their defaults), a `document` block directly in
an `assistant` message, and a `text` block with non-empty `citations` in a `user` message,
directly or inside a `search_result` block. Each is the API's 400 `invalid_request_error`;
checking it here saves the round trip and names the field.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

V2023 = "2023-06-01"
V2026 = "2026-10-21"
SUPPORTED = (V2023, V2026)
REMOVED_IN_2026 = ("temperature", "top_p", "top_k")
# What the API's own refusal says (reference §12.1), so a log reads the same either way.
EXTRA_INPUTS = "Extra inputs are not permitted"


def version_problem(value: str | None) -> str | None:
    """Why `value` is not an `anthropic-version` msgq can honour, or None.

    Only versions whose rules msgq knows are accepted: a job is checked against its version's
    rules before it is queued, and a version msgq cannot check would be sent unchecked.
    """
    if not value:
        return "anthropic-version: header is required"
    if value not in SUPPORTED:
        return f"anthropic-version: {value!r} is not a valid version (use one of {SUPPORTED})"
    return None


def version_violations(
    version: str | None, fields_set: set[str], messages: Sequence[tuple[str, Any]]
) -> Iterator[tuple[str, str]]:
    """(field path, message) for each rule of `version` the body breaks; none for 2023-06-01.

    `fields_set`: the top-level fields the body names (present at all, whatever the value).
    `messages`: (role, content) per message, content as given (a string or a list of blocks,
    models or dicts).
    """
    if version != V2026:
        return
    for name in REMOVED_IN_2026:
        if name in fields_set:
            yield name, f"{EXTRA_INPUTS} (removed in anthropic-version {V2026})"
    for i, (role, content) in enumerate(messages):
        if isinstance(content, list):
            for j, block in enumerate(content):
                problem = _block_problem(role, _plain(block))
                if problem is not None:
                    yield f"messages.{i}.content.{j}{problem[0]}", problem[1]


def _plain(block: Any) -> dict[str, Any]:
    if isinstance(block, dict):
        return block
    dump = getattr(block, "model_dump", None)
    return dump(mode="python") if dump is not None else {}


def _block_problem(role: str, block: dict[str, Any]) -> tuple[str, str] | None:
    kind = block.get("type")
    if role == "assistant" and kind == "document":
        return "", f"document blocks are not permitted in assistant messages under {V2026}"
    if role != "user":
        return None
    if kind == "text" and block.get("citations"):
        return ".citations", f"citations are not permitted in user messages under {V2026}"
    content = block.get("content")
    if kind == "search_result" and isinstance(content, list):  # else malformed: refused elsewhere
        for k, inner in enumerate(content):
            if isinstance(inner, dict) and inner.get("type") == "text" and inner.get("citations"):
                message = f"citations are not permitted in user messages under {V2026}"
                return f".content.{k}.citations", message
    return None
