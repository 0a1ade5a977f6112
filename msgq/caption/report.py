"""What `msgq caption` shows: the dry-run estimate, the live progress, the final summary."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any, TextIO

import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from msgq.caption.images import ImagePrepError, prepare
from msgq.caption.inputs import iter_items, render_prompt
from msgq.caption.run import Tally
from msgq.caption.work import CaptionOptions
from msgq.pricing import prices_for
from schemas import Lane
from schemas.tokens import UNFETCHED_SIZE_PX, image_tokens, text_tokens


def estimate(options: CaptionOptions, max_bytes: int) -> dict[str, Any]:
    """Count, check and estimate without spending anything (nothing is enqueued)."""
    formats: Counter[str] = Counter()
    converting: Counter[str] = Counter()
    images = input_tokens = 0
    unreadable: list[str] = []
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
        except OSError as exc:
            unreadable.append(f"{item.source} ({exc.strerror})")
            continue
        except ImagePrepError as exc:
            unreadable.append(f"{item.source} ({exc})")
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
        "unreadable": len(unreadable),
        # Named, so a typo or a broken file can be found; the first few are enough to act on.
        **({"unreadable_files": unreadable[:10]} if unreadable else {}),
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
        **_by_lane(input_tokens, images * options.max_tokens, options),
    }


def _by_lane(input_tokens: int, max_output: int, options: CaptionOptions) -> dict[str, str]:
    """Both lanes side by side: Message Batches cost half (--lane batch or auto)."""
    prices = prices_for(options.model)
    if prices is None:
        return {}
    low = input_tokens * prices.input / 1e6
    high = low + max_output * prices.output / 1e6
    chosen = {Lane.REALTIME: "realtime", Lane.BATCH: "batch", Lane.AUTO: "batch"}[options.lane]
    rows = {
        "realtime": f"${low:.4f} input, up to ${high:.4f}",
        "batch": f"${low / 2:.4f} input, up to ${high / 2:.4f} (half price; ends within 24 h)",
    }
    return {
        f"cost_{lane}": row + ("  <- this run" if lane == chosen else "")
        for lane, row in rows.items()
    }


class Display:
    """A rich progress bar on a terminal; elsewhere (CI logs, files) one plain, unwrapped line
    per `interval_s`, and a last one at the end (`as_json`: one JSON object per line)."""

    def __init__(
        self,
        total: int | None,
        console: Console | None = None,
        *,
        stream: TextIO | None = None,
        interval_s: float = 5.0,
        as_json: bool = False,
    ) -> None:
        self.console = console or Console(stderr=True)
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() and not as_json
        self.as_json = as_json
        self.total = total
        self.interval_s = interval_s
        self.last_line = 0.0
        self.latest: Tally | None = None
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
        if not self.tty and self.latest is not None:
            self._line(self.latest)

    def update(self, t: Tally) -> None:
        self.latest = t
        elapsed = max(time.monotonic() - t.started, 1e-9)
        finished = t.done + t.failed
        detail = (
            f"in flight {t.in_flight} (running {t.running}) ok {t.done} failed {t.failed} "
            f"retrying {t.retrying} skipped {t.skipped} "
            f"tokens {t.input_tokens + t.output_tokens:,} ${t.cost_usd:.4f} "
            f"{finished / elapsed:.1f}/s"
        )
        self.progress.update(self.task, completed=_handled(t), detail=detail)
        if not self.tty and time.monotonic() - self.last_line >= self.interval_s:
            self._line(t)

    def _line(self, t: Tally) -> None:
        """One line, never wrapped (a log reader greps it), with the total and an ETA."""
        self.last_line = time.monotonic()
        handled, finished = _handled(t), t.done + t.failed
        rate = finished / max(time.monotonic() - t.started, 1e-9)  # this run's, not skips
        eta_s = None
        if self.total is not None and rate > 0:
            eta_s = round(max(self.total - handled, 0) / rate)
        if self.as_json:
            fields = {"handled": handled, "total": self.total, **tally_fields(t)}
            fields |= {"rate_per_s": round(rate, 2), "eta_s": eta_s}
            self.stream.write(orjson.dumps({"event": "progress", **fields}).decode() + "\n")
            self.stream.flush()
            return
        of = f"/{self.total}" if self.total is not None else ""
        eta = "?" if eta_s is None else f"{eta_s}s"
        self.stream.write(
            f"captions {handled}{of}: in flight {t.in_flight} (running {t.running}) "
            f"ok {t.done} failed {t.failed} retrying {t.retrying} "
            f"skipped {t.skipped} failed-before {t.failed_before} "
            f"tokens {t.input_tokens + t.output_tokens} cost ${t.cost_usd:.4f} "
            f"rate {rate:.1f}/s eta {eta}\n"
        )
        self.stream.flush()


def _handled(t: Tally) -> int:
    return t.done + t.failed + t.skipped + t.failed_before


def tally_fields(t: Tally) -> dict[str, Any]:
    """The run's totals by name: the --json summary, and each --json progress line."""
    return {
        "succeeded": t.done,
        "failed": t.failed,
        "skipped": t.skipped,
        "failed_before": t.failed_before,
        "retrying": t.retrying,
        "in_flight": t.in_flight,
        "running": t.running,
        "input_tokens": t.input_tokens,
        "output_tokens": t.output_tokens,
        "cost_usd": round(t.cost_usd, 6),
        "wall_time_s": round(time.monotonic() - t.started, 1),
    }


SUMMARY = (
    ("succeeded", "succeeded"),
    ("failed", "failed"),
    ("skipped", "skipped (done before)"),
    ("failed_before", "failed before (not retried)"),
    ("input_tokens", "input tokens"),
    ("output_tokens", "output tokens"),
    ("cost_usd", "cost USD"),
    ("wall_time_s", "wall time"),
)


def summary(t: Tally, console: Console, *, as_json: bool = False) -> None:
    """On a terminal a table; elsewhere one complete line (never wrapped to 80 columns, as a
    table is when piped), or with `as_json` one JSON object."""
    fields = tally_fields(t)
    if as_json:
        sys.stdout.write(orjson.dumps({"event": "summary", **fields}).decode() + "\n")
        sys.stdout.flush()
        return
    shown = {key: _shown(key, fields[key]) for key, _ in SUMMARY}
    if not console.is_terminal:
        parts = ", ".join(f"{label} {shown[key]}" for key, label in SUMMARY)
        sys.stdout.write(f"msgq caption: {parts}\n")
        sys.stdout.flush()
        return
    table = Table(title="msgq caption")
    for _, label in SUMMARY:
        table.add_column(label)
    table.add_row(*shown.values())
    console.print(table)


def _shown(key: str, value: Any) -> str:
    if key == "cost_usd":
        return f"{value:.4f}"
    if key == "wall_time_s":
        return f"{value:.1f}s"
    return f"{value:,}" if key.endswith("tokens") else str(value)


def estimate_lines(guess: dict[str, Any]) -> list[str]:
    """The dry run as `name: value` lines a person reads: counts by format as `png 3, jpeg 1`
    (not a Python dict), the unreadable files one per line."""
    lines: list[str] = []
    for key, value in guess.items():
        if key == "unreadable_files":
            lines.extend(f"{'unreadable file':>18}: {name}" for name in value)
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
        elif value is None:
            value = "unknown (no price for this model)"
        lines.append(f"{key:>18}: {value}")
    return lines
