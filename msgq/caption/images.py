"""Image preparation for the API: true format, upright, accepted format, right size, within bytes.

Everything the API would do to an image anyway (downscale to the model tier, first frame) is done
here first, so fewer bytes travel and the caption describes what the model really saw.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from schemas.images import DEFAULT_MAX_IMAGE_BYTES, MEDIA_TYPES
from schemas.tokens import resized_size

Image.MAX_IMAGE_PIXELS = 200_000_000  # a 200-MP photo is plausible; beyond that, refuse


class ImagePrepError(ValueError):
    """Why a file cannot be captioned (shown in its `failed` row)."""


@dataclass(frozen=True)
class Prepared:
    data: bytes
    media_type: str
    width: int
    height: int
    source_format: str
    converted: bool  # re-encoded into another format (BMP, TIFF, ... → PNG/JPEG)


def open_image(raw: bytes) -> Image.Image:
    """Decode fully, so truncated files fail here and not at the API."""
    if not raw:
        msg = "empty file"
        raise ImagePrepError(msg)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(raw))
            img.load()
    except UnidentifiedImageError:
        msg = "not an image Pillow can read"
        raise ImagePrepError(msg) from None
    except Image.DecompressionBombError:
        msg = f"image has more than {Image.MAX_IMAGE_PIXELS} pixels"
        raise ImagePrepError(msg) from None
    except (OSError, ValueError, SyntaxError) as exc:
        msg = f"corrupt or truncated image ({exc})"
        raise ImagePrepError(msg) from None
    return img


def prepare(
    raw: bytes,
    *,
    model: str,
    max_side_px: int | None = None,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
) -> Prepared:
    """Raw file bytes → what to send. Raises ImagePrepError with the reason."""
    img = open_image(raw)
    source_format = img.format or "unknown"
    accepted = source_format in MEDIA_TYPES
    upright = ImageOps.exif_transpose(img)
    rotated = upright.size != img.size or _orientation(img) not in (0, 1)
    target = resized_size(*upright.size, model, max_side_px=max_side_px)
    resized = target != upright.size
    if accepted and not rotated and not resized and len(raw) <= max_bytes:
        return Prepared(
            raw,
            MEDIA_TYPES[source_format],
            img.width,
            img.height,
            source_format,
            converted=False,
        )
    out = upright.resize(target, Image.Resampling.LANCZOS) if resized else upright
    keep = source_format if source_format in ("JPEG", "PNG", "WEBP") else None
    data, fmt, out = _encode_within(out, keep, max_bytes)
    return Prepared(
        data,
        MEDIA_TYPES[fmt],
        out.width,
        out.height,
        source_format,
        converted=not accepted,
    )


def _orientation(img: Image.Image) -> int:
    return int(img.getexif().get(0x0112, 1))


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def _encode_within(
    img: Image.Image, keep: str | None, max_bytes: int
) -> tuple[bytes, str, Image.Image]:
    """Re-encode (same format where accepted, else PNG with alpha / JPEG without), shrinking
    quality and then size until it fits."""
    fmt = keep or ("PNG" if _has_alpha(img) else "JPEG")
    for _ in range(12):
        for quality in (90, 80, 70, 60) if fmt in ("JPEG", "WEBP") else (None,):
            data = _encode(img, fmt, quality)
            if len(data) <= max_bytes:
                return data, fmt, img
        if fmt == "PNG" and not _has_alpha(img):
            fmt = "JPEG"  # photos compress far better as JPEG
            continue
        img = img.resize(
            (max(1, int(img.width * 0.8)), max(1, int(img.height * 0.8))), Image.Resampling.LANCZOS
        )
    msg = f"could not fit the image into {max_bytes} bytes"
    raise ImagePrepError(msg)


def _encode(img: Image.Image, fmt: str, quality: int | None) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.convert("RGB").save(buf, "JPEG", quality=quality, optimize=True)
    elif fmt == "WEBP":
        img.save(buf, "WEBP", quality=quality)
    else:
        img.convert("RGBA" if _has_alpha(img) else "RGB").save(buf, "PNG", optimize=True)
    return buf.getvalue()
