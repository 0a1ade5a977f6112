"""API versions (reference §12.1): which `anthropic-version` values exist, and the body rules
that differ between them.

2023-06-01 keeps its rules. 2026-10-21 removes the sampling parameters (refused whenever
present, even at their defaults), a `document` block directly in an `assistant` message, and a
`text` block with non-empty `citations` in a `user` message (directly, or inside a
`search_result` block). Any other version, or none, is a 400.
"""

from __future__ import annotations

from typing import Any

V2023 = "2023-06-01"
V2026 = "2026-10-21"
SUPPORTED = (V2023, V2026)
REMOVED_IN_2026 = ("temperature", "top_p", "top_k")


def version_problem(value: str | None) -> str | None:
    """The 400 message for a missing or unknown `anthropic-version`, or None."""
    if not value:
        return "anthropic-version: header is required"
    if value not in SUPPORTED:
        return f"anthropic-version: {value!r} is not a valid version (use one of {SUPPORTED})"
    return None


def version_refusal(body: dict[str, Any], version: str | None) -> str | None:
    """The 400 message for a body this version refuses, naming the field, or None."""
    if version != V2026:
        return None
    for name in REMOVED_IN_2026:
        if name in body:
            return f"{name}: Extra inputs are not permitted"
    messages = body.get("messages")
    for i, message in enumerate(messages if isinstance(messages, list) else []):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, block in enumerate(content):
            problem = _block_problem(message.get("role"), block)
            if problem is not None:
                return f"messages.{i}.content.{j}{problem}"
    return None


def _block_problem(role: Any, block: Any) -> str | None:
    if not isinstance(block, dict):
        return None
    kind = block.get("type")
    if role == "assistant" and kind == "document":
        return ": document blocks are not permitted in assistant messages"
    if role != "user":
        return None
    if kind == "text" and block.get("citations"):
        return ".citations: citations are not permitted in user messages"
    content = block.get("content")
    if kind == "search_result" and isinstance(content, list):  # else the body check refuses it
        for k, inner in enumerate(content):
            if isinstance(inner, dict) and inner.get("type") == "text" and inner.get("citations"):
                return f".content.{k}.citations: citations are not permitted in user messages"
    return None
