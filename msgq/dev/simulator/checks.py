"""What the real API refuses before anything else: unknown top-level parameters (400) and
models it does not serve (404), in its words, so a typo fails against the simulator too."""

from __future__ import annotations

from typing import Any

from schemas import MessageRequest, capabilities_for

# The Messages create parameters the API documents (shared/reference/anthropic-api.md §1.2),
# beyond those msgq models; msgq itself passes unknown ones through, the API is the judge.
DOCUMENTED_EXTRAS = frozenset(
    {
        "stream",
        "output_config",
        "output_format",
        "cache_control",
        "container",
        "inference_geo",
        "mcp_servers",
        "context_management",
        "diagnostics",
    }
)
KNOWN_PARAMETERS = frozenset(MessageRequest.model_fields) | DOCUMENTED_EXTRAS


def refusal(body: dict[str, Any]) -> tuple[int, str] | None:
    """(status, message) as the API answers a body it will not run, or None."""
    unknown = sorted(set(body) - KNOWN_PARAMETERS)
    if unknown:
        return 400, f"{unknown[0]}: Extra inputs are not permitted"
    model = body.get("model")
    if isinstance(model, str) and model and not _served(model):
        return 404, f"model: {model}"
    return None


def _served(model: str) -> bool:
    # Every id in the capabilities table, and any other claude-… id (a model newer than the
    # table); anything else (gpt-4o, a typo'd family) is not a model the API knows.
    return capabilities_for(model).known or model.startswith("claude-")
