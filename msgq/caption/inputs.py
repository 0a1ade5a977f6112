"""What `msgq caption` captions: files, folders (recursive), manifests of paths or URLs."""

from __future__ import annotations

import csv
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".png",
        ".gif",
        ".webp",
        ".bmp",
        ".tif",
        ".tiff",
        ".ico",
        ".ppm",
        ".pgm",
        ".pbm",
        ".tga",
        ".jfif",
        ".jp2",
        ".pcx",
        ".dib",
    }
)
MANIFEST_SUFFIXES = frozenset({".txt", ".csv", ".lst"})
TEMPLATE_FIELDS = frozenset({"name", "stem", "directory", "width", "height"})


@dataclass(frozen=True)
class Item:
    """One image: a local file, or a URL the API fetches itself (msgq fetches nothing)."""

    source: str  # the path or URL, as written in the output row

    @property
    def is_url(self) -> bool:
        return self.source.startswith(("http://", "https://"))

    @property
    def path(self) -> Path:
        return Path(self.source)


def iter_items(inputs: list[str]) -> Iterator[Item]:
    """Folders are walked in sorted order (so reruns see the same order); a `.txt`/`.csv`
    named directly is a manifest, one path or URL a line (CSV: a `path`/`url` column, else the
    first)."""
    for raw in inputs:
        if raw.startswith(("http://", "https://")):
            yield Item(raw)
            continue
        path = Path(raw)
        if path.is_dir():
            for found in sorted(p for p in path.rglob("*") if p.is_file()):
                if found.suffix.lower() in IMAGE_SUFFIXES:
                    yield Item(str(found))
        elif path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
            yield from _manifest(path)
        else:
            yield Item(str(path))  # a missing or odd file becomes a failed row, with the reason


def count_items(inputs: list[str]) -> int:
    """How many items `iter_items` will yield: a directory walk and manifest lines, no image
    read, so even a large folder is counted in seconds (the progress bar's total and ETA)."""
    return sum(1 for _ in iter_items(inputs))


def missing_inputs(inputs: list[str]) -> list[str]:
    """Paths named on the command line that do not exist (URLs are the API's to fetch)."""
    return [
        raw
        for raw in inputs
        if not raw.startswith(("http://", "https://")) and not Path(raw).exists()
    ]


def _manifest(path: Path) -> Iterator[Item]:
    base = path.parent
    with path.open(newline="", encoding="utf-8") as handle:
        if path.suffix.lower() == ".csv":
            rows = list(csv.reader(handle))
            header = [c.strip().lower() for c in rows[0]] if rows else []
            column = next((header.index(c) for c in ("path", "url", "file") if c in header), None)
            body = rows[1:] if column is not None else rows
            entries = [r[column or 0].strip() for r in body if r and len(r) > (column or 0)]
        else:
            entries = [line.strip() for line in handle if line.strip()]
    for entry in entries:
        if entry.startswith("#"):
            continue
        is_url = entry.startswith(("http://", "https://"))
        yield Item(entry if is_url or Path(entry).is_absolute() else str(base / entry))


def check_template(template: str) -> None:
    """Refuse unknown placeholders before any work is done."""
    names = {field for _, field, _, _ in string.Formatter().parse(template) if field}
    unknown = names - TEMPLATE_FIELDS
    if unknown:
        msg = f"unknown prompt placeholder(s) {sorted(unknown)}; use {sorted(TEMPLATE_FIELDS)}"
        raise ValueError(msg)


def render_prompt(template: str, item: Item, width: int | None, height: int | None) -> str:
    """Per-image variables, as captioning tools for training sets offer."""
    name = item.source.rsplit("/", 1)[-1]
    return template.format(
        name=name,
        stem=name.rsplit(".", 1)[0],
        directory="" if item.is_url else item.path.parent.name,
        width="" if width is None else width,
        height="" if height is None else height,
    )
