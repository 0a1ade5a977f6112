"""`msgq caption`: its options, turned into a caption run (msgq.caption does the work)."""

from __future__ import annotations

from pathlib import Path

import click

from msgq.settings import Settings
from schemas import Lane


@click.command()
@click.argument("inputs", nargs=-1)
@click.option(
    "--prompt",
    help="Prompt template: {name} {stem} {directory} {width} {height}. "
    'Default: "Describe this image in one sentence."',
)
@click.option("--prompt-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", default="claude-haiku-4-5", show_default=True)
@click.option("--max-tokens", default=200, show_default=True)
@click.option(
    "--out",
    default="captions.jsonl",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
)
@click.option(
    "--sidecar",
    is_flag=True,
    help="Also write name.txt beside name.jpg (name.jpg.txt where two images share a name).",
)
@click.option("--sidecar-ext", default=".txt", show_default=True, help="e.g. .caption")
@click.option("--force-sidecar", is_flag=True, help="Replace sidecars msgq did not write.")
@click.option("--retry-failed", is_flag=True, help="Re-run images that failed in earlier runs.")
@click.option("--cancel", is_flag=True, help="Cancel the jobs an interrupted run left running.")
@click.option(
    "--window",
    type=int,
    help="Most jobs in Redis at once [4 x MSGQ_MAX_JOBS, at most 256: 256 by default; "
    "batch/auto lane: MSGQ_BATCH_MAX_REQUESTS, at most 5,000].",
)
@click.option("--max-side", type=int, help="Downscale so the long side is at most this.")
@click.option(
    "--lane",
    type=click.Choice([lane.value for lane in Lane]),
    default="realtime",
    show_default=True,
    help="batch: Message Batches at half price, ends within 24 h; auto: batch (no deadline).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Count and estimate tokens and cost (both lanes); spend nothing.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="The dry run's estimate, or the run's summary, as one JSON object on stdout; "
    "progress as JSON Lines on stderr.",
)
def caption(
    inputs: tuple[str, ...],
    prompt: str | None,
    prompt_file: Path | None,
    model: str,
    max_tokens: int,
    out: Path,
    sidecar: bool,
    sidecar_ext: str,
    force_sidecar: bool,
    retry_failed: bool,
    cancel: bool,
    window: int | None,
    max_side: int | None,
    lane: str,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Caption images (files, folders, manifests of paths or URLs) into JSONL and sidecars."""
    from msgq.caption.cli import cancel_pending, run_caption
    from msgq.caption.work import DEFAULT_PROMPT, CaptionOptions

    settings = Settings()
    if cancel:
        cancel_pending(out, settings)
        return
    if not inputs:
        msg = "give images, folders or manifests to caption"
        raise click.UsageError(msg)
    if prompt_file is not None:
        prompt = prompt_file.read_text(encoding="utf-8").strip()
    options = CaptionOptions(
        inputs=list(inputs),
        prompt=prompt or DEFAULT_PROMPT,
        model=model,
        max_tokens=max_tokens,
        out=out,
        sidecar=sidecar,
        sidecar_ext=sidecar_ext,
        window=window or _default_window(Lane(lane), settings),
        max_side_px=max_side,
        retry_failed=retry_failed,
        force_sidecar=force_sidecar,
        lane=Lane(lane),
    )
    run_caption(options, settings, dry_run=dry_run, as_json=as_json)


def _default_window(lane: Lane, settings: Settings) -> int:
    """Realtime: enough to keep the workers busy. Batch: pooling is the point, so many more
    (Redis then holds up to this many prepared images until their upstream batch ends)."""
    from msgq.caption.work import REALTIME_WINDOW_MAX

    if lane is Lane.REALTIME:  # capped: workers hold hundreds of calls, each image is MBs
        return min(4 * settings.max_jobs, REALTIME_WINDOW_MAX)
    return min(settings.batch_max_requests, 5000)
