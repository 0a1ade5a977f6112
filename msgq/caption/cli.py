"""Glue for `msgq caption`: checks, the run or the dry run, Ctrl-C, and what is printed."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import click
import orjson
from rich.console import Console

from msgq.caption.inputs import check_template, count_items, missing_inputs
from msgq.caption.output import CaptionLog
from msgq.caption.report import Display, estimate, estimate_lines, summary
from msgq.caption.run import CaptionRun, Tally
from msgq.caption.work import CaptionOptions
from msgq.client import Client
from msgq.connections import connect
from msgq.errors import JobNotFoundError
from msgq.settings import Settings
from schemas import JobStatus


class CaptionFailedError(click.ClickException):
    exit_code = 1


def pending_file(out: Path) -> Path:
    """Where an interrupted run lists the job IDs it left in the fleet (for --cancel)."""
    return out.with_name(out.name + ".pending")


def run_caption(
    options: CaptionOptions, settings: Settings, *, dry_run: bool, as_json: bool = False
) -> None:
    """Raises CaptionFailedError (exit 1) when images failed, in this run or an earlier one
    that was not retried, and click.Abort (exit 130) after a Ctrl-C summary. `as_json`: the
    dry run and the summary as one JSON object on stdout, progress as JSON Lines on stderr."""
    missing = missing_inputs(options.inputs)
    if missing:
        msg = "no such file or folder: " + ", ".join(missing)
        raise click.UsageError(msg)
    try:
        check_template(options.prompt)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    console = Console()
    if dry_run:
        guess = estimate(options, settings.max_image_bytes)
        if as_json:
            click.echo(orjson.dumps(guess).decode())
        else:
            click.echo("\n".join(estimate_lines(guess)))
        return
    tally, left = asyncio.run(_run(options, settings, as_json=as_json))
    summary(tally, console, as_json=as_json)
    if left is not None:
        _report_interrupt(options.out, left)
        raise click.Abort
    pending_file(options.out).unlink(missing_ok=True)  # a finished run leaves nothing behind
    if tally.failed or tally.failed_before:
        earlier = (
            f"; {tally.failed_before} failed in an earlier run (--retry-failed re-runs them)"
            if tally.failed_before
            else ""
        )
        msg = f"{tally.failed} image(s) failed in this run{earlier}; see {options.out}"
        raise CaptionFailedError(msg)


async def _run(
    options: CaptionOptions, settings: Settings, *, as_json: bool
) -> tuple[Tally, list[str] | None]:
    """The run, with Ctrl-C turned into a summary. Returns the tally and, if interrupted, the
    job IDs still in the fleet. A second Ctrl-C is Python's own: it exits at once."""
    total = await asyncio.to_thread(count_items, options.inputs)  # names only, no image read
    log = CaptionLog(options.out)
    redis = connect(settings)
    try:
        with Display(total=total, as_json=as_json) as display:
            run = CaptionRun(redis, settings, options, log, display.update)
            task = asyncio.create_task(run.run())
            interrupted = await _until_done_or_ctrl_c(task)
        if not interrupted:
            return task.result(), None
        left = await run.still_running()
        if left:
            pending_file(options.out).write_text("\n".join(left) + "\n", encoding="utf-8")
        return run.tally, left
    finally:
        log.close()
        await redis.aclose()


async def _until_done_or_ctrl_c(task: asyncio.Task[Tally]) -> bool:
    loop = asyncio.get_running_loop()
    interrupted = False

    def on_sigint() -> None:
        nonlocal interrupted
        interrupted = True
        loop.remove_signal_handler(signal.SIGINT)  # the next Ctrl-C raises KeyboardInterrupt
        task.cancel()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        await asyncio.wait([task])
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    if not interrupted:
        task.result()  # re-raise what the run raised
    return interrupted


def _report_interrupt(out: Path, left: list[str]) -> None:
    if not left:
        click.echo("msgq: interrupted; no caption jobs were left running.", err=True)
        return
    click.echo(
        f"msgq: interrupted; {len(left)} caption job(s) are still queued or running in the "
        f"fleet (IDs in {pending_file(out)}).\n"
        "  Keep them: they run on; rerun the same command to collect their captions "
        "(nothing is paid twice).\n"
        f"  Stop them: msgq caption --cancel --out {out} (nothing more is spent; a later rerun "
        "sends the canceled images again).",
        err=True,
    )


def cancel_pending(out: Path, settings: Settings) -> None:
    """`msgq caption --cancel`: cancel the jobs an interrupted run left in the fleet."""
    path = pending_file(out)
    if not path.exists():
        msg = f"nothing to cancel: no {path} (it is written when a run is interrupted)"
        raise click.UsageError(msg)
    ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    async def cancel_all() -> int:
        canceled = 0
        async with Client(connect(settings), settings) as client:
            for job_id in ids:
                with contextlib.suppress(JobNotFoundError):  # past retention: nothing to stop
                    record = await client.cancel(job_id)
                    canceled += record.status is JobStatus.CANCELED or record.cancel_requested
        return canceled

    canceled = asyncio.run(cancel_all())
    path.unlink()
    click.echo(f"canceled {canceled} of {len(ids)} job(s); the others had already ended")
