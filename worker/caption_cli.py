"""Glue for `msgq caption`: settings, Redis, the run or the dry run, and what is printed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click
from rich.console import Console

from worker.caption_inputs import check_template
from worker.caption_output import CaptionLog
from worker.caption_report import Display, estimate, summary
from worker.captions import CaptionOptions, CaptionRun
from worker.client import Client
from worker.settings import Settings


def run_caption(
    inputs: list[str],
    *,
    prompt: str,
    model: str,
    max_tokens: int,
    out: Path,
    sidecar: bool,
    sidecar_ext: str,
    window: int | None,
    max_side: int | None,
    dry_run: bool,
) -> int:
    """Returns how many images failed (the CLI exits 1 when any did)."""
    try:
        check_template(prompt)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    settings = Settings()
    options = CaptionOptions(
        inputs=inputs,
        prompt=prompt,
        model=model,
        max_tokens=max_tokens,
        out=out,
        sidecar=sidecar,
        sidecar_ext=sidecar_ext,
        window=window or 4 * settings.max_jobs,
        max_side_px=max_side,
    )
    console = Console()
    if dry_run:
        for key, value in estimate(options, settings.max_image_bytes).items():
            console.print(f"{key:>18}: {value}")
        return 0
    return asyncio.run(_run(options, settings, console))


async def _run(options: CaptionOptions, settings: Settings, console: Console) -> int:
    log = CaptionLog(options.out)
    try:
        async with Client.from_url(settings.redis_url, settings) as client:
            with Display(total=None) as display:
                tally = await CaptionRun(client, options, log, display.update).run()
    finally:
        log.close()
    summary(tally, console)
    return tally.failed
