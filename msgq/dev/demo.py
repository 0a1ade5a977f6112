"""`make demo`: start a local msgq, run the sample requests through it, print results, stop."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from msgq.caption.output import CaptionLog
from msgq.caption.run import CaptionOptions, CaptionRun
from msgq.client import Client
from msgq.connections import connect
from msgq.dev.stack import Stack
from msgq.settings import Settings
from schemas import JobRecord, Message

ROOT = Path(__file__).resolve().parents[2]  # msgq/dev/demo.py → the checkout
SAMPLES = ROOT / "samples"
KINDS = {
    "text": "text.json",
    "multi-turn": "multi_turn.json",
    "prefill": "prefill.json",
    "image": "image_base64.json",
}


def sample_requests() -> dict[str, dict[str, Any]]:
    """The four seed kinds: text, multi-turn, prefill, image."""
    return {k: orjson.loads((SAMPLES / "requests" / f).read_bytes()) for k, f in KINDS.items()}


async def caption_samples(client: Client, redis_url: str, out: Path) -> list[tuple[str, JobRecord]]:
    """`msgq caption samples/images`, in-process: one row per bundled image."""
    options = CaptionOptions(
        inputs=[str(SAMPLES / "images")], out=out, prompt="Describe this image in one sentence."
    )
    log = CaptionLog(out)
    redis = connect(redis_url)
    try:
        await CaptionRun(redis, Settings(), options, log).run()
    finally:
        log.close()
        await redis.aclose()
    results = []
    for line in (await asyncio.to_thread(out.read_bytes)).splitlines():
        row = orjson.loads(line)
        if row["job_id"]:
            results.append((f"caption {Path(row['path']).name}", await client.get(row["job_id"])))
    return results


async def run_jobs(redis_url: str, out: Path) -> list[tuple[str, JobRecord]]:
    async with Client.from_url(redis_url, Settings()) as client:
        jobs = {
            kind: await client.submit(body, metadata={"demo": kind})
            for kind, body in sample_requests().items()
        }
        results = [(kind, await client.wait(job.id, timeout=120)) for kind, job in jobs.items()]
        return results + await caption_samples(client, redis_url, out)


def show(console: Console, results: list[tuple[str, JobRecord]]) -> None:
    table = Table(title="msgq demo")
    for column in ("kind", "status", "reply", "in", "out", "cost USD"):
        table.add_column(column, overflow="fold")
    for kind, record in results:
        reply = Message.model_validate(record.result).text() if record.result else ""
        table.add_row(
            kind,
            record.status.value,
            reply or (record.error.message if record.error else ""),
            str(record.usage.input_tokens if record.usage else "-"),
            str(record.usage.output_tokens if record.usage else "-"),
            f"{record.cost_usd:.6f}" if record.cost_usd is not None else "-",
        )
    console.print(table)
    total = sum(r.cost_usd or 0 for _, r in results)
    console.print(f"{len(results)} jobs, total cost ${total:.6f}")


def main() -> None:
    console = Console()
    use_simulator = Settings().anthropic_api_key is None
    data_dir = ROOT / ".msgq" / "demo"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    if use_simulator:
        console.print(
            "[bold]ANTHROPIC_API_KEY is not set: the local simulator answers, "
            "not the Anthropic API.[/bold] Replies and costs are simulated."
        )
    else:
        console.print(
            "[bold]ANTHROPIC_API_KEY is set: these jobs call the real Anthropic API "
            "and cost real money.[/bold]"
        )
    with (
        (data_dir / "services.log").open("wb") as log,
        Stack(data_dir, use_simulator=use_simulator, log=log) as stack,
    ):
        console.print(f"embedded Redis at {stack.redis_url}; one worker; logs in {log.name}")
        results = asyncio.run(run_jobs(stack.redis_url, data_dir / "captions.jsonl"))
    show(console, results)
    console.print("Stopped Redis, the worker" + (" and the simulator." if use_simulator else "."))


if __name__ == "__main__":
    main()
