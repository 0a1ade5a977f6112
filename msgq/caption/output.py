"""Caption output: a JSONL row per image, appended as images finish, and atomic sidecars."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from msgq.caption.inputs import IMAGE_SUFFIXES

SIDECAR_MANIFEST = ".msgq-sidecars"


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


# Rows of jobs that ended without an answer because someone or something stopped them (a
# `--cancel`, a deadline): no verdict on the image, so a rerun resubmits them.
NOT_RUN = frozenset({"canceled", "expired"})


class CaptionLog:
    """The JSONL output. On open, a torn last line (a crash mid-write) is cut off, and what the
    rows say is remembered, the latest row winning: a rerun skips what succeeded and reports
    (or, with --retry-failed, re-runs) what did not.

    Success is remembered per path as well as per job: two paths holding the same bytes are one
    job, and each needs its own row (and sidecar), so a job done under one path does not make
    the other "done before"."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Job IDs that succeeded → the offset of the first row saying so (read back for a
        # duplicate's row: offsets, not rows, so a million-image log stays small in memory).
        self.done: dict[str, int] = {}
        self.done_paths: dict[str, str] = {}  # path → the job ID its latest row succeeded with
        self.failed_ids: set[str] = set()  # job IDs whose latest row did not succeed
        self.failed_paths: set[str] = set()  # failed before any job: unreadable, refused
        self.size = 0  # bytes in the file: the offset of the next row
        if path.exists():
            self._load()
        self.handle = path.open("ab")

    def _load(self) -> None:
        raw = self.path.read_bytes()
        keep = raw if raw.endswith(b"\n") or not raw else raw[: raw.rfind(b"\n") + 1]
        if keep != raw:
            write_atomically(self.path, keep.decode("utf-8"))
        offset = 0
        for line in keep.splitlines(keepends=True):
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                row = None
            if isinstance(row, dict):
                self._remember(row, offset)
            offset += len(line)
        self.size = offset

    def _remember(self, row: dict[str, Any], offset: int) -> None:
        job_id, path = row.get("job_id"), str(row.get("path", ""))
        if row.get("status") != "succeeded":
            self.done_paths.pop(path, None)
        if not job_id:
            self.failed_paths.add(path)
        elif row.get("status") == "succeeded":
            self.done.setdefault(job_id, offset)
            self.done_paths[path] = job_id
            self.failed_ids.discard(job_id)
            self.failed_paths.discard(path)
        elif row.get("status") in NOT_RUN:  # stopped, not failed: a rerun sends it again
            self.failed_ids.discard(job_id)
            self.failed_paths.discard(path)
        else:
            self.failed_ids.add(job_id)
            self.failed_paths.discard(path)

    def done_row(self, job_id: str) -> dict[str, Any] | None:
        """The first row that says `job_id` succeeded (None when no row does)."""
        offset = self.done.get(job_id)
        if offset is None:
            return None
        self.handle.flush()
        with self.path.open("rb") as handle:
            handle.seek(offset)
            row = orjson.loads(handle.readline())
        return row if isinstance(row, dict) else None

    def append(self, row: dict[str, Any]) -> None:
        # One write of one whole line, flushed: a partial run leaves a valid file.
        line = orjson.dumps(row) + b"\n"
        self.handle.write(line)
        self.handle.flush()
        self._remember(row, self.size)
        self.size += len(line)

    def close(self) -> None:
        self.handle.close()


class Sidecars:
    """`--sidecar` captions beside the images, never over a file msgq did not write.

    `name.txt` beside `name.jpg` (the training-set convention), unless another image in that
    folder shares the stem (`cat.jpg` and `cat.png`): then both get the full name,
    `cat.jpg.txt` and `cat.png.txt`. Every path written is recorded first in a manifest,
    `.msgq-sidecars` beside the output file; an existing file not in it is left alone unless
    `force` (`--force-sidecar`).
    """

    def __init__(self, out: Path, ext: str, *, force: bool = False) -> None:
        self.ext = ext if ext.startswith(".") else f".{ext}"
        self.force = force
        self.manifest = out.parent / SIDECAR_MANIFEST
        self.ours: set[str] = set()
        if self.manifest.exists():
            self.ours = set(self.manifest.read_text(encoding="utf-8").splitlines())
        self._shared_stems: dict[Path, set[str]] = {}

    def path_for(self, image: Path) -> Path:
        shared = image.stem in self._shared_in(image.parent)
        return image.with_name((image.name if shared else image.stem) + self.ext)

    def _shared_in(self, folder: Path) -> set[str]:
        """Stems that more than one image in `folder` has (one listing per folder, cached)."""
        if folder not in self._shared_stems:
            stems: Counter[str] = Counter()
            with contextlib.suppress(OSError):
                for entry in os.scandir(folder):
                    name = Path(entry.name)
                    if name.suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
                        stems[name.stem] += 1
            self._shared_stems[folder] = {stem for stem, n in stems.items() if n > 1}
        return self._shared_stems[folder]

    def refusal(self, image: Path) -> str | None:
        """Why this image's sidecar may not be written, or None."""
        path = self.path_for(image)
        if self.force or not path.exists() or str(path.resolve()) in self.ours:
            return None
        return (
            f"sidecar {path} already exists and msgq did not write it; "
            "not replaced (--force-sidecar replaces it)"
        )

    def write(self, image: Path, caption: str) -> None:
        path = self.path_for(image)
        if self.refusal(image):  # a file appeared since the job was submitted
            return
        key = str(path.resolve())
        if key not in self.ours:
            # Claimed before written: a crash between leaves a claim on a missing file
            # (harmless), never an unclaimed file of ours that a rerun would refuse to update.
            with self.manifest.open("a", encoding="utf-8") as handle:
                handle.write(key + "\n")
            self.ours.add(key)
        write_atomically(path, caption)
