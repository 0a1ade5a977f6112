"""Input tokens estimated before a call, so the limiter can reserve them."""

from __future__ import annotations

import math

import orjson

from schemas import MessageRequest, capabilities_for
from schemas.blocks import Base64ImageSource, ImageBlock
from schemas.tokens import UNFETCHED_SIZE_PX, image_tokens, text_tokens


def estimate_input_tokens(request: MessageRequest) -> int:
    """Text at about four characters a token, times the model's tokenizer ratio (the newer
    tokenizer, 4.7 on, counts ~30% more for the same text); images ceil(w/28)*ceil(h/28)
    after resize (patches, which the tokenizer does not change)."""
    parts: list[str] = []
    if isinstance(request.system, str):
        parts.append(request.system)
    elif request.system:
        parts += [block.text for block in request.system]
    for message in request.messages:
        if isinstance(message.content, str):
            parts.append(message.content)
            continue
        for block in message.content:
            if not isinstance(block, ImageBlock):
                parts.append(
                    str(getattr(block, "text", ""))
                    or orjson.dumps(block.model_dump(mode="json", exclude_none=True)).decode()[
                        :20_000
                    ]
                )
    if request.tools:
        parts.append(orjson.dumps([t.model_dump(mode="json") for t in request.tools]).decode())
    ratio = capabilities_for(request.model).token_ratio
    total = math.ceil(sum(text_tokens(p) for p in parts) * ratio)
    for image in request.images():
        size = (
            image.source.size_px
            if isinstance(image.source, Base64ImageSource)
            else UNFETCHED_SIZE_PX
        )
        total += image_tokens(*size, request.model)
    return max(1, total)
