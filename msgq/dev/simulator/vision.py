"""What the simulator "sees" in an image: size, format and dominant colours, from the pixels."""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass

from PIL import Image

from schemas.tokens import image_tokens, resized_size

__all__ = ["Seen", "image_tokens", "look_at", "resized_size"]

PALETTE = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
    "red": (200, 40, 40),
    "orange": (240, 140, 30),
    "yellow": (240, 220, 40),
    "green": (50, 160, 60),
    "blue": (40, 80, 200),
    "light blue": (140, 190, 240),
    "purple": (130, 50, 160),
    "pink": (240, 150, 190),
    "brown": (120, 80, 40),
}


@dataclass(frozen=True)
class Seen:
    width: int
    height: int
    format: str
    colours: tuple[str, ...]

    def describe(self) -> str:
        colours = " and ".join(self.colours) if self.colours else "indistinct colours"
        return f"A {self.width}x{self.height} {self.format} image, mostly {colours}."


def look_at(data_b64: str) -> Seen | None:
    """None when the bytes are not an image the simulator can open."""
    try:
        raw = base64.b64decode(data_b64, validate=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(raw)) as img:
                fmt = img.format or "unknown"
                width, height = img.size
                thumb = img.convert("RGB").resize((16, 16))
    except (OSError, ValueError, binascii.Error, Image.DecompressionBombError):
        return None
    counts: dict[str, int] = {}
    raw = thumb.tobytes()
    for offset in range(0, len(raw), 3):
        name = _nearest((raw[offset], raw[offset + 1], raw[offset + 2]))
        counts[name] = counts.get(name, 0) + 1
    ranked = sorted(counts, key=lambda n: (-counts[n], n))
    colours = tuple(n for n in ranked[:2] if counts[n] >= 16)
    return Seen(width, height, fmt, colours)


def _nearest(pixel: tuple[int, int, int]) -> str:
    return min(
        PALETTE, key=lambda n: sum((a - b) ** 2 for a, b in zip(pixel, PALETTE[n], strict=True))
    )
