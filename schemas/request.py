"""The Messages request (`POST /v1/messages` body) and the model rules checked before any call."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import PydanticCustomError

from schemas.blocks import (
    Base64ImageSource,
    ContentBlock,
    ImageBlock,
    Strict,
    TextBlock,
    ToolResultBlock,
    unknown_fields,
)
from schemas.capabilities import Capabilities, capabilities_for
from schemas.images import DEFAULT_MAX_IMAGE_BYTES
from schemas.model_info import ModelLimits
from schemas.rules import check_limits, check_version, limits_for
from schemas.rules import refuse as _refuse

MANY_IMAGES = 20
MANY_IMAGES_MAX_SIDE_PX = 2000
MIN_THINKING_BUDGET = 1024


class InputMessage(Strict):
    # "system" appears in the newest SDK for mid-conversation system turns.
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]


class RequestMetadata(Strict):
    user_id: str | None = Field(default=None, max_length=256)


class Tool(BaseModel):
    """Custom tools have `input_schema`; server tools (`type: web_search_...`) have other fields."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=128)
    type: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] | None = None


class ToolChoiceAuto(Strict):
    type: Literal["auto"]
    disable_parallel_tool_use: StrictBool | None = None


class ToolChoiceAny(Strict):
    type: Literal["any"]
    disable_parallel_tool_use: StrictBool | None = None


class ToolChoiceTool(Strict):
    type: Literal["tool"]
    name: str = Field(min_length=1)
    disable_parallel_tool_use: StrictBool | None = None


class ToolChoiceNone(Strict):
    type: Literal["none"]


ToolChoice = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")
]


class ThinkingEnabled(Strict):
    type: Literal["enabled"]
    budget_tokens: int = Field(ge=MIN_THINKING_BUDGET, strict=True)
    display: Literal["summarized", "omitted"] | None = None


class ThinkingAdaptive(Strict):
    type: Literal["adaptive"]
    display: Literal["summarized", "omitted"] | None = None


class ThinkingDisabled(Strict):
    type: Literal["disabled"]


class ThinkingBetweenTools(Strict):
    type: Literal["between_tools"]


Thinking = Annotated[
    ThinkingEnabled | ThinkingAdaptive | ThinkingDisabled | ThinkingBetweenTools,
    Field(discriminator="type"),
]


class MessageRequest(BaseModel):
    """A Messages create body. Unknown top-level fields pass through: the API is their authority."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    # Strict numbers: the body is sent as given, so "100" must not pass as 100. Ints are still
    # floats (JSON has one number type).
    max_tokens: int = Field(ge=0, strict=True)
    messages: list[InputMessage] = Field(min_length=1, max_length=100_000)
    system: str | list[TextBlock] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.0, strict=True)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0, strict=True)
    top_k: int | None = Field(default=None, ge=0, strict=True)
    stop_sequences: list[str] | None = None
    metadata: RequestMetadata | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    service_tier: Literal["auto", "standard_only"] | None = None
    stream: bool | None = Field(
        default=None, description="either way msgq streams from the API and stores the Message"
    )

    @model_validator(mode="after")
    def _check_model_rules(self, info: ValidationInfo) -> MessageRequest:
        context = info.context or {}
        check_version(self, context.get("anthropic_version"))
        caps = capabilities_for(self.model)
        limits = limits_for(self.model, context.get("models"))
        # Every rule is checked, so a request with two problems reports both in one round.
        problems: list[dict[str, str]] = []
        checks: tuple[Callable[[], None], ...] = (
            lambda: _check_prefill(self, caps),
            lambda: _check_sampling(self, caps),
            lambda: _check_thinking(self, caps),
            lambda: _check_images(self, caps, limits),
        )
        for check in checks:
            try:
                check()
            except PydanticCustomError as exc:
                problems.append({k: str(v) for k, v in (exc.context or {}).items()})
        if problems:
            message = "; ".join(p["message"] for p in problems)
            found = {"field": problems[0]["field"], "message": message, "problems": problems}
            raise PydanticCustomError("model_rule", "{message}", found)  # noqa: EM101  # an error code
        if context.get("in_batch") and self.max_tokens == 0:
            _refuse("max_tokens", "0 is not allowed inside a batch")
        if limits is not None:
            check_limits(self, limits, in_batch=bool(context.get("in_batch")))
        return self

    def images(self) -> Iterator[ImageBlock]:
        """Every image block in the conversation, tool results included (the API counts those)."""
        for message in self.messages:
            if isinstance(message.content, str):
                continue
            for block in message.content:
                if isinstance(block, ImageBlock):
                    yield block
                elif isinstance(block, ToolResultBlock) and isinstance(block.content, list):
                    yield from (b for b in block.content if isinstance(b, ImageBlock))

    def unknown_fields(self) -> set[str]:
        """`type.field` names of fields on known blocks that msgq does not model (kept, sent)."""
        blocks: list[BaseModel] = [] if isinstance(self.system, str) else list(self.system or [])
        for message in self.messages:
            if not isinstance(message.content, str):
                blocks.extend(message.content)
        return set(unknown_fields(blocks))


def _check_prefill(request: MessageRequest, caps: Capabilities) -> None:
    if request.messages[-1].role == "assistant" and not caps.prefill:
        _refuse(
            "messages",
            f"{request.model} does not support assistant message prefill; "
            "the conversation must end with a user message",
        )


def _check_sampling(request: MessageRequest, caps: Capabilities) -> None:
    if caps.sampling:
        both = request.temperature is not None and request.top_p is not None
        if both and not caps.temperature_with_top_p:
            _refuse(
                "temperature", f"temperature and top_p cannot both be specified for {request.model}"
            )
        return
    nondefault = [
        name
        for name, value, default in (
            ("temperature", request.temperature, 1.0),
            ("top_p", request.top_p, None),
            ("top_k", request.top_k, None),
        )
        if value is not None and value != default
    ]
    if nondefault:
        _refuse(nondefault[0], f"{request.model} does not accept a non-default {nondefault[0]}")


def _check_thinking(request: MessageRequest, caps: Capabilities) -> None:
    thinking = request.thinking
    if thinking is None or thinking.type != "enabled":
        return
    if not caps.budget_thinking:
        _refuse(
            "thinking",
            f"{request.model} does not accept thinking.type 'enabled' with budget_tokens; "
            "use {'type': 'adaptive'}",
        )
    if thinking.budget_tokens >= request.max_tokens:
        _refuse("thinking", "thinking.budget_tokens must be less than max_tokens")


def _check_images(request: MessageRequest, caps: Capabilities, limits: ModelLimits | None) -> None:
    images = list(request.images())
    # The table's count where it knows the model; else the Models API's context size says it.
    most = caps.max_images
    if not caps.known and limits is not None and limits.max_images is not None:
        most = limits.max_images
    if len(images) > most:
        _refuse(
            "messages",
            f"{len(images)} images in one request; {request.model} allows at most {most}",
        )
    if len(images) <= MANY_IMAGES:
        return
    for image in images:
        if isinstance(image.source, Base64ImageSource):
            width, height = image.source.size_px
            if max(width, height) > MANY_IMAGES_MAX_SIDE_PX:
                _refuse(
                    "messages",
                    f"a request with more than {MANY_IMAGES} images allows at most "
                    f"{MANY_IMAGES_MAX_SIDE_PX} px per side; one image is {width}x{height}",
                )


def validate_request(
    data: Any,
    *,
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    in_batch: bool = False,
    anthropic_version: str | None = None,
    models: Mapping[str, ModelLimits] | None = None,
) -> MessageRequest:
    """Validate a Messages body; raises pydantic's ValidationError with every field error.

    `anthropic_version`: whose rules apply (None: 2023-06-01's). `models`: the Models API's
    limits by model id (see `schemas.model_info.index_models`); None checks the table alone.
    """
    context = {
        "max_image_bytes": max_image_bytes,
        "in_batch": in_batch,
        "anthropic_version": anthropic_version,
        "models": models,
    }
    return MessageRequest.model_validate(data, context=context)


def field_errors(exc: ValidationError, data: Any = None) -> list[dict[str, str]]:
    """Field errors as plain data with readable paths, never the offending input (image bytes).

    pydantic puts union labels (`str`, `list[...]`, discriminator tags) into locations and reports
    every branch of `str | list` unions; walking the input drops the labels and the branches
    that could not apply, so a path reads `messages.0.content.1.source.data`.
    """
    rows: list[dict[str, str]] = []
    for err in exc.errors(include_url=False, include_input=False):
        path, wrong_branch = _clean_loc(err["loc"], data)
        if err["type"] == "missing" and err["loc"] and isinstance(err["loc"][-1], str):
            # The absent field is not in the input, so the walk dropped it: it is the point.
            path.append(err["loc"][-1])
        problems = err.get("ctx", {}).get("problems") if err["type"] == "model_rule" else None
        if problems and not path:  # one row per broken rule, each at its own field
            rows.extend(
                {"loc": p["field"], "msg": p["message"], "type": "model_rule", "_wrong_branch": ""}
                for p in problems
            )
            continue
        if err["type"] == "model_rule" and not path:
            path = [str(err.get("ctx", {}).get("field", ""))]
        rows.append(
            {
                "loc": ".".join(path) or "request",
                "msg": err["msg"],
                "type": err["type"],
                "_wrong_branch": "1" if wrong_branch else "",
            }
        )
    kept = [row for row in rows if not row["_wrong_branch"]] or rows
    return [{k: v for k, v in row.items() if k != "_wrong_branch"} for row in kept]


def summarize(errors: list[dict[str, str]], limit: int | None = None) -> str:
    """Field errors as one line, `loc: msg; loc: msg`, for messages and logs."""
    return "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:limit])


_BRANCH_TYPES: dict[str, type] = {"str": str, "list": list, "dict": dict}


def _clean_loc(loc: tuple[int | str, ...], data: Any) -> tuple[list[str], bool]:
    node, path, wrong_branch = data, [], False
    for part in loc:
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        ):
            node = cast(Any, node)[part]  # a dict key or an in-range list index, checked above
            path.append(str(part))
        elif isinstance(part, str):
            expected = _BRANCH_TYPES.get(part.split("[", 1)[0])
            if expected is not None and not isinstance(node, expected):
                wrong_branch = True
        else:
            path.append(str(part))
    return path, wrong_branch
