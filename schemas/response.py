"""The Message the API answers with. Lenient: new block types and usage fields are kept as sent."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


class ResponseBlock(Lenient):
    type: str


class Usage(Lenient):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation: dict[str, Any] | None = None
    service_tier: str | None = None


class Message(Lenient):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    content: list[ResponseBlock]
    model: str
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: Usage

    def text(self) -> str:
        """The concatenated text blocks: what a caption or a plain answer is."""
        return "".join(
            str(getattr(block, "text", "")) for block in self.content if block.type == "text"
        )
