"""Request content blocks and their sources, as discriminated unions on `type`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    ValidationInfo,
    model_validator,
)

from schemas.images import DEFAULT_MAX_IMAGE_BYTES, ImageDataError, check_base64_image


class Strict(BaseModel):
    """Request settings msgq models completely (tool_choice, thinking): unknown fields are typos."""

    model_config = ConfigDict(extra="forbid")


class Known(BaseModel):
    """A block or source whose fields msgq knows: those are typed, new ones pass through.

    The SDK adds block fields faster than we follow (`tool_use.caller`, `image.transformations`);
    refusing them would refuse what the API accepts, so they are kept, sent and logged by name.
    """

    model_config = ConfigDict(extra="allow")


class Opaque(BaseModel):
    """A block type the API documents whose shape msgq leaves to the API."""

    model_config = ConfigDict(extra="allow")


class CacheControl(Known):
    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class Base64ImageSource(Known):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str = Field(repr=False)
    _width: int = PrivateAttr(default=0)
    _height: int = PrivateAttr(default=0)

    @model_validator(mode="after")
    def _check_bytes(self, info: ValidationInfo) -> Base64ImageSource:
        context = info.context or {}
        max_bytes = int(context.get("max_image_bytes", DEFAULT_MAX_IMAGE_BYTES))
        try:
            facts = check_base64_image(self.media_type, self.data, max_bytes=max_bytes)
        except ImageDataError as exc:
            raise ValueError(str(exc)) from None
        self._width, self._height = facts.width, facts.height
        return self

    @property
    def size_px(self) -> tuple[int, int]:
        """Width and height read from the image header during validation."""
        return self._width, self._height


class URLImageSource(Known):
    type: Literal["url"]
    url: str = Field(pattern=r"^https?://\S+$")


class FileImageSource(Known):
    type: Literal["file"]
    file_id: str = Field(min_length=1)


ImageSource = Annotated[
    Base64ImageSource | URLImageSource | FileImageSource, Field(discriminator="type")
]


class TextBlock(Known):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: list[dict[str, Any]] | None = None


class ImageBlock(Known):
    type: Literal["image"]
    source: ImageSource
    cache_control: CacheControl | None = None


class Base64PDFSource(Known):
    type: Literal["base64"]
    media_type: Literal["application/pdf"]
    data: str = Field(repr=False, min_length=1)


class PlainTextSource(Known):
    type: Literal["text"]
    media_type: Literal["text/plain"]
    data: str


class ContentSource(Known):
    type: Literal["content"]
    content: str | list[TextBlock | ImageBlock]


class URLDocumentSource(Known):
    type: Literal["url"]
    url: str = Field(pattern=r"^https?://\S+$")


class FileDocumentSource(Known):
    type: Literal["file"]
    file_id: str = Field(min_length=1)


DocumentSource = Annotated[
    Base64PDFSource | PlainTextSource | ContentSource | URLDocumentSource | FileDocumentSource,
    Field(discriminator="type"),
]


class DocumentBlock(Known):
    type: Literal["document"]
    source: DocumentSource
    title: str | None = None
    context: str | None = None
    citations: dict[str, Any] | None = None
    cache_control: CacheControl | None = None


class ToolUseBlock(Known):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]
    cache_control: CacheControl | None = None


class SearchResultBlock(Known):
    """Modelled, not opaque: the 2026-10-21 rules read its `content`, so a malformed one must be
    refused here (a 400 naming the field) rather than trip those rules."""

    type: Literal["search_result"]
    source: str
    title: str
    content: list[TextBlock]
    citations: dict[str, Any] | None = None
    cache_control: CacheControl | None = None


class ToolResultExtraBlock(Opaque):
    type: Literal["tool_reference", "browser_state"]


ToolResultContent = Annotated[
    TextBlock | ImageBlock | DocumentBlock | SearchResultBlock | ToolResultExtraBlock,
    Field(discriminator="type"),
]


class ToolResultBlock(Known):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[ToolResultContent] | None = None
    is_error: StrictBool | None = None
    cache_control: CacheControl | None = None


class ThinkingBlock(Known):
    type: Literal["thinking"]
    thinking: str
    signature: str


class RedactedThinkingBlock(Known):
    type: Literal["redacted_thinking"]
    data: str


class ServerBlock(Opaque):
    """Server-tool, search and newer blocks."""

    type: Literal[
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "container_upload",
        "mid_conv_system",
    ]


ContentBlock = Annotated[
    TextBlock
    | ImageBlock
    | DocumentBlock
    | ToolUseBlock
    | ToolResultBlock
    | ThinkingBlock
    | RedactedThinkingBlock
    | SearchResultBlock
    | ServerBlock,
    Field(discriminator="type"),
]


def unknown_fields(blocks: Iterable[BaseModel]) -> Iterator[str]:
    """`type.field` for each field a known block (or its source) carries that msgq does not model.

    Nested objects are named by their path, e.g. `image.source.detail`; opaque blocks are skipped,
    since every field of theirs is one we leave to the API.
    """
    for block in blocks:
        yield from _unknown(block, str(getattr(block, "type", "")))


def _unknown(node: BaseModel, label: str) -> Iterator[str]:
    if isinstance(node, Opaque):
        return
    yield from (f"{label}.{name}" for name in node.model_extra or {})
    for name in type(node).model_fields:
        value = getattr(node, name)
        if isinstance(value, BaseModel):
            yield from _unknown(value, f"{label}.{name}")
        elif isinstance(value, list):
            yield from unknown_fields(item for item in value if isinstance(item, BaseModel))
