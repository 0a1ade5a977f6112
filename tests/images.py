"""Image bytes made in the test run (no fixtures on disk needed)."""

from __future__ import annotations

import base64
import io

from PIL import Image


def image_bytes(
    fmt: str = "PNG", size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (200, 40, 40)
) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    return buf.getvalue()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def image_block(raw: bytes, media_type: str = "image/png") -> dict[str, object]:
    return {
        "type": "image",
        "source": {"type": "base64", "media_type": media_type, "data": b64(raw)},
    }
