"""Glue for `msgq caption`: settings, Redis, the run or the dry run, and what is printed."""

from __future__ import annotations

import asyncio

import click
from redis.asyncio import Redis
from rich.console import Console

from worker.caption.inputs import check_template
from worker.caption.output import CaptionLog
from worker.caption.report import Display, estimate, summary
from worker.caption.run import CaptionOptions, CaptionRun
from worker.settings import Settings


def run_caption(options: CaptionOptions, settings: Settings, *, dry_run: bool) -> int:
    """Returns how many images failed (the CLI exits 1 when any did)."""
    try:
        check_template(options.prompt)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    console = Console()
    if dry_run:
        for key, value in estimate(options, settings.max_image_bytes).items():
            console.print(f"{key:>18}: {value}")
        return 0
    return asyncio.run(_run(options, settings, console))


async def _run(options: CaptionOptions, settings: Settings, console: Console) -> int:
    log = CaptionLog(options.out)
    try:
        redis = Redis.from_url(settings.redis_url)
        try:
            with Display(total=None) as display:
                tally = await CaptionRun(redis, settings, options, log, display.update).run()
        finally:
            await redis.aclose()
    finally:
        log.close()
    summary(tally, console)
    return tally.failed
