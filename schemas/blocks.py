"""Request content blocks and their sources, as discriminated unions on `type`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, model_validator

from schemas.images import DEFAULT_MAX_IMAGE_BYTES, ImageDataError, check_base64_image


class Strict(BaseModel):
    """What we accept: unknown fields inside blocks are typos until the API says otherwise."""

    model_config = ConfigDict(extra="forbid")


class CacheControl(Strict):
    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class Base64ImageSource(Strict):
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


class URLImageSource(Strict):
    type: Literal["url"]
    url: str = Field(pattern=r"^https?://\S+$")


class FileImageSource(Strict):
    type: Literal["file"]
    file_id: str = Field(min_length=1)


ImageSource = Annotated[
    Base64ImageSource | URLImageSource | FileImageSource, Field(discriminator="type")
]


class TextBlock(Strict):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: list[dict[str, Any]] | None = None


class ImageBlock(Strict):
    type: Literal["image"]
    source: ImageSource
    cache_control: CacheControl | None = None


class Base64PDFSource(Strict):
    type: Literal["base64"]
    media_type: Literal["application/pdf"]
    data: str = Field(repr=False, min_length=1)


class PlainTextSource(Strict):
    type: Literal["text"]
    media_type: Literal["text/plain"]
    data: str


class ContentSource(Strict):
    type: Literal["content"]
    content: str | list[TextBlock | ImageBlock]


class URLDocumentSource(Strict):
    type: Literal["url"]
    url: str = Field(pattern=r"^https?://\S+$")


class FileDocumentSource(Strict):
    type: Literal["file"]
    file_id: str = Field(min_length=1)


DocumentSource = Annotated[
    Base64PDFSource | PlainTextSource | ContentSource | URLDocumentSource | FileDocumentSource,
    Field(discriminator="type"),
]


class DocumentBlock(Strict):
    type: Literal["document"]
    source: DocumentSource
    title: str | None = None
    context: str | None = None
    citations: dict[str, Any] | None = None
    cache_control: CacheControl | None = None


class ToolUseBlock(Strict):
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]
    cache_control: CacheControl | None = None


ToolResultContent = Annotated[TextBlock | ImageBlock | DocumentBlock, Field(discriminator="type")]


class ToolResultBlock(Strict):
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[ToolResultContent] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None


class ThinkingBlock(Strict):
    type: Literal["thinking"]
    thinking: str
    signature: str


class RedactedThinkingBlock(Strict):
    type: Literal["redacted_thinking"]
    data: str


class ServerBlock(BaseModel):
    """Block types the API documents whose shapes msgq leaves to the API (server tools, search)."""

    model_config = ConfigDict(extra="allow")
    type: Literal[
        "search_result",
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
    | ServerBlock,
    Field(discriminator="type"),
]
