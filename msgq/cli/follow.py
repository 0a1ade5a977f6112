"""`msgq status ID --follow`: a job's text as it streams (like `tail -f`), then its record.

Straight from Redis: subscribe to the job's progress channel, then `Client.wait` for the end.
Whatever was not seen live (text from before this started, or the last fraction of a second)
is printed from the stored Message at the end, so the output is the whole answer once.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import click
import orjson

from msgq.client import Client
from msgq.connections import connect
from msgq.keys import progress_channel
from msgq.settings import Settings
from schemas import JobRecord, JobStatus

POLL_S = 0.25
FOLLOW_S = 24 * 3600.0


class _Printer:
    """Prints each attempt's text once, in order; notes a new attempt on `note`."""

    def __init__(self, write: Callable[[str], None], note: Callable[[str], None]) -> None:
        self.write, self.note = write, note
        self.attempt: int | None = None
        self.printed = 0  # characters of this attempt's text printed
        self.ended_line = True

    def delta(self, data: dict[str, Any]) -> None:
        attempt, offset, text = data.get("attempt"), int(data["offset"]), str(data["text"])
        if attempt != self.attempt:
            if self.attempt is not None:
                self.text("\n")
                self.note(
                    f"msgq: attempt {attempt} (the text above was from attempt {self.attempt})"
                )
            self.attempt, self.printed = attempt, offset
        skip = max(0, self.printed - offset)  # never print a character twice
        self.text(text[skip:])
        self.printed = max(self.printed, offset + len(text))

    def text(self, text: str) -> None:
        if text:
            self.write(text)
            self.ended_line = text.endswith("\n")

    def rest(self, record: JobRecord) -> None:
        """The stored Message's text past what was printed live."""
        if record.status is JobStatus.SUCCEEDED and record.result is not None:
            if self.attempt not in (None, record.attempts):
                self.text("\n")
                self.printed = 0
            blocks = record.result.get("content") or []
            full = "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")
            self.text(full[self.printed :])
        if not self.ended_line:
            self.text("\n")


async def follow(
    settings: Settings,
    job_id: str,
    write: Callable[[str], None],
    note: Callable[[str], None],
) -> JobRecord:
    """Print the job's text as it arrives; return its record once it has ended."""
    printer = _Printer(write, note)
    async with (
        Client.from_url(settings.redis_url, settings) as client,
        connect(settings) as redis,
        redis.pubsub() as pubsub,
    ):
        await pubsub.subscribe(progress_channel(job_id))
        await client.get(job_id)  # JobNotFoundError before any waiting
        ending = asyncio.create_task(client.wait(job_id, timeout=FOLLOW_S))
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL_S)
                if message is None and ending.done():
                    break  # what was published before the ending has been read
                if message is not None:
                    printer.delta(orjson.loads(message["data"]))
        finally:
            ending.cancel()
        record = ending.result()
    printer.rest(record)
    return record


def follow_to_terminal(settings: Settings, job_id: str) -> JobRecord:
    """The CLI's entry: text to stdout as it comes, notes to stderr; the final record."""
    write = functools.partial(click.echo, nl=False)
    note = functools.partial(click.echo, err=True)
    return asyncio.run(follow(settings, job_id, write, note))
