"""Checks on base64 image payloads: decodes, is what it claims to be, fits the byte limit."""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from typing import NamedTuple

DEFAULT_MAX_IMAGE_BYTES = 5 * 1024 * 1024
MEDIA_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}
MAX_SIDE_PX = 8000


class ImageFacts(NamedTuple):
    """What the bytes really are; `media_type` is None when Pillow can't identify them."""

    media_type: str | None
    width: int
    height: int
    size_bytes: int


class ImageDataError(ValueError):
    """The image payload is unusable; the message says why and never contains the bytes."""


def decode_base64(data: str) -> bytes:
    """Strict base64: any character outside the alphabet is an error, not silently skipped."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        msg = "image data is not valid base64"
        raise ImageDataError(msg) from exc


def sniff(raw: bytes) -> ImageFacts:
    """Identify an image from its own bytes (header only; nothing is decoded in full)."""
    from PIL import Image  # only requests with images pay for loading Pillow

    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # DecompressionBombWarning: size is checked by the caller
            with Image.open(io.BytesIO(raw)) as img:
                return ImageFacts(
                    MEDIA_TYPES.get(img.format or ""), img.width, img.height, len(raw)
                )
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        return ImageFacts(None, 0, 0, len(raw))


def check_base64_image(media_type: str, data: str, *, max_bytes: int) -> ImageFacts:
    """Refuse what the API would: bad base64, wrong magic bytes, too many bytes, too wide."""
    raw = decode_base64(data)
    if not raw:
        msg = "image data is empty"
        raise ImageDataError(msg)
    if len(raw) > max_bytes:
        msg = f"image is {len(raw)} bytes decoded; the per-image limit is {max_bytes} bytes"
        raise ImageDataError(msg)
    facts = sniff(raw)
    if facts.media_type is None:
        msg = f"image data is not a JPEG, PNG, GIF or WebP image (declared {media_type})"
        raise ImageDataError(msg)
    if facts.media_type != media_type:
        msg = f"image bytes are {facts.media_type} but media_type says {media_type}"
        raise ImageDataError(msg)
    if max(facts.width, facts.height) > MAX_SIDE_PX:
        msg = f"image is {facts.width}x{facts.height} px; the API allows at most {MAX_SIDE_PX} px"
        raise ImageDataError(msg)
    return facts
