"""What `msgq caption` shows: the dry-run estimate, the live progress, the final summary."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from schemas.tokens import UNFETCHED_SIZE_PX, image_tokens, text_tokens
from worker.caption.images import ImagePrepError, prepare
from worker.caption.inputs import iter_items, render_prompt
from worker.caption.run import CaptionOptions, Tally
from worker.pricing import prices_for


def estimate(options: CaptionOptions, max_bytes: int) -> dict[str, Any]:
    """Count, check and estimate without spending anything (nothing is enqueued)."""
    formats: Counter[str] = Counter()
    converting: Counter[str] = Counter()
    images = failed = input_tokens = 0
    for item in iter_items(options.inputs):
        if item.is_url:
            formats["url"] += 1
            images += 1
            input_tokens += image_tokens(*UNFETCHED_SIZE_PX, options.model) + text_tokens(
                render_prompt(options.prompt, item, None, None)
            )
            continue
        try:
            raw = item.path.read_bytes()
            prepared = prepare(
                raw, model=options.model, max_side_px=options.max_side_px, max_bytes=max_bytes
            )
        except (OSError, ImagePrepError):
            failed += 1
            continue
        images += 1
        formats[prepared.source_format] += 1
        if prepared.converted:
            converting[prepared.source_format] += 1
        tokens = image_tokens(prepared.width, prepared.height, options.model)
        prompt = render_prompt(options.prompt, item, prepared.width, prepared.height)
        input_tokens += tokens + text_tokens(prompt)
    prices = prices_for(options.model)
    return {
        "images": images,
        "unreadable": failed,
        "formats": dict(formats),
        "to_convert": dict(converting),
        "input_tokens": input_tokens,
        "max_output_tokens": images * options.max_tokens,
        "input_cost_usd": round(input_tokens * prices.input / 1e6, 4) if prices else None,
        "max_cost_usd": round(
            (input_tokens * prices.input + images * options.max_tokens * prices.output) / 1e6, 4
        )
        if prices
        else None,
    }


class Display:
    """A rich progress bar on a terminal; a plain line every 5 s elsewhere (CI logs, files)."""

    def __init__(self, total: int | None, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.tty = sys.stderr.isatty()
        self.last_line = 0.0
        self.progress = Progress(
            TextColumn("[bold]captions"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.tty,
        )
        self.task = self.progress.add_task("captions", total=total, detail="")

    def __enter__(self) -> Display:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def update(self, t: Tally) -> None:
        elapsed = max(time.monotonic() - t.started, 1e-9)
        finished = t.done + t.failed
        detail = (
            f"ok {t.done} failed {t.failed} retrying {t.retrying} skipped {t.skipped} "
            f"tokens {t.input_tokens + t.output_tokens:,} ${t.cost_usd:.4f} "
            f"{finished / elapsed:.1f}/s"
        )
        self.progress.update(self.task, completed=finished + t.skipped, detail=detail)
        if not self.tty and time.monotonic() - self.last_line >= 5:
            self.last_line = time.monotonic()
            self.console.print(f"captions: {finished + t.skipped} done; {detail}")


def summary(t: Tally, console: Console) -> None:
    table = Table(title="msgq caption")
    for column in (
        "succeeded",
        "failed",
        "skipped (done before)",
        "input tokens",
        "output tokens",
        "cost USD",
        "wall time",
    ):
        table.add_column(column)
    table.add_row(
        str(t.done),
        str(t.failed),
        str(t.skipped),
        f"{t.input_tokens:,}",
        f"{t.output_tokens:,}",
        f"{t.cost_usd:.4f}",
        f"{time.monotonic() - t.started:.1f}s",
    )
    console.print(table)
