"""`msgq status ID --follow`: a job's text as it streams (like `tail -f`), then its record.

Straight from Redis: subscribe to the job's progress channel, then `Client.wait` for the end.
Whatever was not seen live (text from before this started, or the last fraction of a second)
is printed from the stored Message at the end, so the output is the whole answer once.

A job that has not started says so at once, and again whenever its status or the reason it
waits changes (the same reasons as the dashboard's, from msgq.waits): a queued job followed from
a script or a pipe used to print nothing at all until it ended, which looked like a hang.
Plain output: text on stdout, status lines on stderr, the record last. `--json`: one JSON
object per line on stdout (`status`, `attempt`, `text`, then `record`), nothing else.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any

import click
import orjson
from redis.asyncio import Redis

from msgq import waits
from msgq.channels import subscriber
from msgq.client import Client
from msgq.connections import connect
from msgq.settings import Settings
from schemas import JobRecord, JobStatus

POLL_S = 0.25
STATUS_EVERY_S = 1.0  # how often the record is read for a status change while following
FOLLOW_S = 24 * 3600.0


class _Printer:
    """Prints each attempt's text once, in order; notes a new attempt and each status change on
    `note` (stderr)."""

    def __init__(self, write: Callable[[str], None], note: Callable[[str], None]) -> None:
        self.write, self.note = write, note
        self.attempt: int | None = None
        self.printed = 0  # characters of this attempt's text printed
        self.ended_line = True
        self.shown: tuple[str, str | None] | None = None  # the last status (and wait) shown

    def status(self, record: JobRecord, waiting: dict[str, str] | None) -> None:
        """A line when the status or the reason it waits changed since the last one."""
        now = (record.status.value, waiting["label"] if waiting else None)
        if now == self.shown or record.status.terminal:
            return
        self.shown = now
        self._status(record, waiting)

    def _status(self, record: JobRecord, waiting: dict[str, str] | None) -> None:
        detail = f", waiting for {waiting['label']}: {waiting['why']}" if waiting else ""
        if record.status is JobStatus.IN_PROGRESS:
            detail = f", attempt {record.attempts} of {record.max_attempts}"
        self.note(f"msgq: job {record.id} is {record.status.value.replace('_', ' ')}{detail}")

    def new_attempt(self, attempt: Any) -> None:
        if self.attempt is not None:
            self.text("\n")
            self.note(f"msgq: attempt {attempt} (the text above was from attempt {self.attempt})")

    def delta(self, data: dict[str, Any]) -> None:
        attempt, offset, text = data.get("attempt"), int(data["offset"]), str(data["text"])
        if attempt != self.attempt:
            self.new_attempt(attempt)
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
            if self.attempt != record.attempts:
                if self.attempt is not None:
                    self.new_attempt(record.attempts)
                self.attempt, self.printed = record.attempts, 0
            blocks = record.result.get("content") or []
            full = "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")
            self.text(full[self.printed :])
        if not self.ended_line:
            self.text("\n")

    def record(self, record: JobRecord) -> None:
        dumped = orjson.dumps(record.model_dump(mode="json"), option=orjson.OPT_INDENT_2)
        self.write(dumped.decode() + "\n")


class _JsonPrinter(_Printer):
    """The same events as JSON Lines on stdout, for a script: each line a whole object."""

    def _event(self, kind: str, **fields: Any) -> None:
        self.write(orjson.dumps({"event": kind, **fields}).decode() + "\n")

    def _status(self, record: JobRecord, waiting: dict[str, str] | None) -> None:
        self._event(
            "status",
            status=record.status.value,
            attempts=record.attempts,
            waiting=waiting["label"] if waiting else None,
            why=waiting["why"] if waiting else None,
        )

    def new_attempt(self, attempt: Any) -> None:
        self._event("attempt", attempt=attempt)

    def text(self, text: str) -> None:
        if text:
            self._event("text", attempt=self.attempt, text=text)

    def rest(self, record: JobRecord) -> None:
        self.ended_line = True  # no closing newline: every event is its own line
        super().rest(record)

    def record(self, record: JobRecord) -> None:
        self._event("record", record=record.model_dump(mode="json"))


async def _watch(
    redis: Redis, settings: Settings, client: Client, job_id: str, printer: _Printer
) -> None:
    record = await client.get(job_id)
    printer.status(record, await waits.job_reason(redis, settings, record))


async def follow(
    settings: Settings,
    job_id: str,
    write: Callable[[str], None],
    note: Callable[[str], None],
    *,
    as_json: bool = False,
) -> JobRecord:
    """Print the job's status and its text as it arrives, then its record once it has ended;
    return that record."""
    printer = (_JsonPrinter if as_json else _Printer)(write, note)
    async with (
        Client.from_url(settings.redis_url, settings) as client,
        connect(settings) as redis,
        subscriber(redis, settings.keys.for_job(job_id)) as pubsub,  # its partition's shard
    ):
        await pubsub.subscribe(settings.keys.progress_channel(job_id))
        await _watch(redis, settings, client, job_id, printer)  # JobNotFoundError first
        ending = asyncio.create_task(client.wait(job_id, timeout=FOLLOW_S))
        looked = time.monotonic()
        try:
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL_S)
                if message is None and ending.done():
                    break  # what was published before the ending has been read
                if message is not None:
                    printer.delta(orjson.loads(message["data"]))
                if time.monotonic() - looked >= STATUS_EVERY_S and not ending.done():
                    looked = time.monotonic()
                    await _watch(redis, settings, client, job_id, printer)
        finally:
            ending.cancel()
        record = ending.result()
    printer.rest(record)
    printer.record(record)
    return record


def follow_to_terminal(settings: Settings, job_id: str, *, as_json: bool = False) -> JobRecord:
    """The CLI's entry: text (or JSON Lines) to stdout as it comes, notes to stderr; prints the
    final record and returns it."""
    write = functools.partial(click.echo, nl=False)
    note = functools.partial(click.echo, err=True)
    return asyncio.run(follow(settings, job_id, write, note, as_json=as_json))
