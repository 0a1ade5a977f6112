"""Request rules that depend on more than the body: the job's API version, and what the Models
API says the model accepts. Each breach is refused before any call, with the field named."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic_core import PydanticCustomError

from schemas.blocks import DocumentBlock
from schemas.model_info import ModelLimits
from schemas.versions import version_violations

if TYPE_CHECKING:
    from schemas.request import MessageRequest


def refuse(field: str, message: str) -> None:
    """Raise the model-rule error; the field travels in its context for `field_errors`."""
    template = "{message}"
    context = {"field": field, "message": message}
    raise PydanticCustomError("model_rule", template, context)  # noqa: EM101  # an error code, not a message


def check_version(request: MessageRequest, version: str | None) -> None:
    messages = [(m.role, m.content) for m in request.messages]
    for field, message in version_violations(version, set(request.model_fields_set), messages):
        refuse(field, message)


def limits_for(model: str, models: Mapping[str, ModelLimits] | None) -> ModelLimits | None:
    """The Models API's entry for `model` (by id or undated alias), or None."""
    if not models:
        return None
    return models.get(model)


def check_limits(request: MessageRequest, limits: ModelLimits, *, in_batch: bool) -> None:
    """Refuse what the Models API says this model does not accept, naming the model."""
    model = request.model
    if limits.max_tokens is not None and request.max_tokens > limits.max_tokens:
        refuse(
            "max_tokens",
            f"max_tokens: {request.max_tokens} > {limits.max_tokens}, which is the maximum "
            f"allowed number of output tokens for {model}",
        )
    if in_batch and limits.batch is False:
        refuse("model", f"{model} does not support the Message Batches API")
    _check_thinking_type(request, limits)
    _check_output_config(request, limits)
    _check_inputs(request, limits)


def _check_thinking_type(request: MessageRequest, limits: ModelLimits) -> None:
    thinking = request.thinking
    if thinking is None or limits.thinking_types is None:
        return
    if thinking.type not in limits.thinking_types:
        allowed = ", ".join(sorted(limits.thinking_types)) or "none"
        refuse(
            "thinking",
            f"{request.model} does not support thinking.type {thinking.type!r} "
            f"(supported: {allowed})",
        )


def _check_output_config(request: MessageRequest, limits: ModelLimits) -> None:
    config: Any = (request.model_extra or {}).get("output_config")
    if not isinstance(config, dict):
        return
    effort = config.get("effort")
    levels = limits.effort_levels
    if effort is not None and levels is not None and effort not in levels:
        allowed = ", ".join(sorted(levels)) or "none"
        refuse(
            "output_config.effort",
            f"{request.model} does not support effort {effort!r} (supported: {allowed})",
        )
    if config.get("format") is not None and limits.structured_outputs is False:
        refuse("output_config.format", f"{request.model} does not support structured outputs")


def _check_inputs(request: MessageRequest, limits: ModelLimits) -> None:
    images = sum(1 for _ in request.images())
    if images and limits.image_input is False:
        refuse("messages", f"{request.model} does not accept image input")
    if limits.pdf_input is False and any(_is_pdf(request)):
        refuse("messages", f"{request.model} does not accept PDF input")


def _is_pdf(request: MessageRequest) -> list[bool]:
    found = []
    for message in request.messages:
        if isinstance(message.content, list):
            for block in message.content:
                if isinstance(block, DocumentBlock):
                    media = getattr(block.source, "media_type", None)
                    found.append(media == "application/pdf")
    return found
