"""What the Models API (`GET /v1/models`) says one model accepts, reduced to what msgq checks.

The API serves `ModelInfo` objects (the official SDK's `anthropic.types.ModelInfo`): limits and
a `capabilities` object. Prices are not served, so they stay in models.toml. Parsing is lenient
(new keys are ignored, a missing one means "not said"), since the API may add capabilities.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict

_SNAPSHOT_DATE = re.compile(r"-\d{8}$")
ONE_M_CONTEXT = 1_000_000


class ModelLimits(BaseModel):
    """One model's limits and capabilities as the Models API gave them; None: not said."""

    model_config = ConfigDict(frozen=True)

    id: str
    display_name: str | None = None
    max_tokens: int | None = None
    max_input_tokens: int | None = None
    batch: bool | None = None
    image_input: bool | None = None
    pdf_input: bool | None = None
    structured_outputs: bool | None = None
    citations: bool | None = None
    thinking_types: frozenset[str] | None = None
    effort_levels: frozenset[str] | None = None

    @classmethod
    def from_model_info(cls, info: dict[str, Any]) -> ModelLimits:
        caps = info.get("capabilities") or {}
        thinking = (caps.get("thinking") or {}).get("types")
        effort = caps.get("effort")
        return cls(
            id=str(info["id"]),
            display_name=info.get("display_name"),
            max_tokens=info.get("max_tokens"),
            max_input_tokens=info.get("max_input_tokens"),
            batch=_supported(caps, "batch"),
            image_input=_supported(caps, "image_input"),
            pdf_input=_supported(caps, "pdf_input"),
            structured_outputs=_supported(caps, "structured_outputs"),
            citations=_supported(caps, "citations"),
            thinking_types=_levels(thinking),
            effort_levels=_levels(effort) if effort and effort.get("supported") else frozenset(),
        )

    @property
    def max_images(self) -> int | None:
        """The vision docs' rule (reference §1.6): 600 on 1M-context models, else 100."""
        if self.max_input_tokens is None:
            return None
        return 600 if self.max_input_tokens >= ONE_M_CONTEXT else 100


def _supported(caps: dict[str, Any], name: str) -> bool | None:
    value = caps.get(name)
    return bool(value.get("supported")) if isinstance(value, dict) else None


def _levels(shape: Any) -> frozenset[str] | None:
    if not isinstance(shape, dict):
        return None
    return frozenset(
        name for name, v in shape.items() if isinstance(v, dict) and v.get("supported") is True
    )


def index_models(models: list[ModelLimits]) -> dict[str, ModelLimits]:
    """By id and by undated id, so `claude-haiku-4-5` finds `claude-haiku-4-5-20251001`."""
    index: dict[str, ModelLimits] = {}
    for model in models:
        index.setdefault(_SNAPSHOT_DATE.sub("", model.id), model)
        index[model.id] = model
    return index
