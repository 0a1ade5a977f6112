"""Caption output: a JSONL row per image, appended as images finish, and atomic sidecars."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import orjson


def write_atomically(path: Path, text: str) -> None:
    """Temporary file in the same folder, then rename: a crash never leaves half a caption."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class CaptionLog:
    """The JSONL output. On open, a torn last line (a crash mid-write) is cut off, and the
    job IDs already written are remembered so a rerun skips them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: set[str] = set()
        self.failed_paths: set[str] = set()
        if path.exists():
            self._load()
        self.handle = path.open("ab")

    def _load(self) -> None:
        raw = self.path.read_bytes()
        keep = raw if raw.endswith(b"\n") or not raw else raw[: raw.rfind(b"\n") + 1]
        if keep != raw:
            write_atomically(self.path, keep.decode("utf-8"))
        for line in keep.splitlines():
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if row.get("job_id"):
                self.done.add(row["job_id"])
            else:
                self.failed_paths.add(row.get("path", ""))

    def append(self, row: dict[str, Any]) -> None:
        # One write of one whole line, flushed: a partial run leaves a valid file.
        self.handle.write(orjson.dumps(row) + b"\n")
        self.handle.flush()
        if row.get("job_id"):
            self.done.add(row["job_id"])

    def close(self) -> None:
        self.handle.close()


def sidecar_path(image: Path, ext: str) -> Path:
    return image.with_suffix(ext if ext.startswith(".") else f".{ext}")
