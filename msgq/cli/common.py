"""What every `msgq` verb shares: the client from the environment, JSON output, the failed-job
exit code."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
from dotenv import dotenv_values

from msgq.cli.config import dotenv_settings, env_names, source_of
from msgq.client import Client
from msgq.settings import Settings
from schemas import JobStatus

T = TypeVar("T")
FAILED_STATUSES = {JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED}


class JobFailedError(click.ClickException):
    exit_code = 1


DEV_ENV_PATH = Path(".msgq") / "dev.env"
# Set by `msgq dev` for the commands it starts: it has warned about misspelt variables once.
QUIET_TYPOS = "MSGQ_DEV_CHILD"
REDIS_VARIABLES = ("REDIS_URL", "MSGQ_REDIS_URL")


# The dev.env this command took REDIS_URL from, if any: an error about Redis names it.
_taken_from: list[Path] = []


def use_dev_env(path: Path = DEV_ENV_PATH) -> str | None:
    """Point this command at the Redis a running `msgq dev` serves (its dev.env), when neither
    the environment nor .env names one; returns the URL taken. Without this, a `msgq dev`
    on another port left `msgq submit` writing to a Redis no worker reads."""
    if any(os.environ.get(name) for name in REDIS_VARIABLES) or not path.is_file():
        return None
    dotenv = {k.upper() for k in dotenv_values(".env")} if Path(".env").is_file() else set()
    if dotenv & set(REDIS_VARIABLES):
        return None
    url = dotenv_values(path).get("REDIS_URL")
    if url:
        os.environ["REDIS_URL"] = url
        _taken_from.append(path)
    return url


def redis_origin(settings: Settings) -> str:
    """Which Redis this command uses and why, for an error that cannot reach it: the URL
    (password masked), where it came from, and what to check."""
    url = mask_url(settings.redis_url)
    if _taken_from:
        return (
            f"{url}, from {_taken_from[-1]} (written by `msgq dev` in this directory; is it "
            "still running? Start it again, or set REDIS_URL)"
        )
    variable, where = source_of(
        env_names("redis_url", Settings.model_fields["redis_url"]), dotenv_settings()
    )
    if where == "default":
        return (
            f"{url}, the default because REDIS_URL is unset (start `msgq dev` in this "
            "directory, or set REDIS_URL to your Redis)"
        )
    place = "the environment" if where == "env" else where
    return (
        f"{url}, from {variable} in {place} (check the host, the port, the password and that "
        "the server is running)"
    )


def mask_url(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


def dump(data: Any) -> None:
    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def with_client(fn: Callable[[Client], Awaitable[T]]) -> T:
    async def run() -> T:
        settings = Settings()
        async with Client.from_url(settings.redis_url, settings) as client:
            await client.check_layout()  # another MSGQ_PARTITIONS would read the wrong places
            return await fn(client)

    return asyncio.run(run())
