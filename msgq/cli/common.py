"""What every `msgq` verb shares: the client from the environment, JSON output, the failed-job
exit code."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import orjson

from msgq.client import Client
from msgq.settings import Settings
from schemas import JobStatus

T = TypeVar("T")
FAILED_STATUSES = {JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED}


class JobFailedError(click.ClickException):
    exit_code = 1


def dump(data: Any) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def with_client(fn: Callable[[Client], Awaitable[T]]) -> T:
    async def run() -> T:
        settings = Settings()
        async with Client.from_url(settings.redis_url, settings) as client:
            return await fn(client)

    return asyncio.run(run())
