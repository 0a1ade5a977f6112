"""The `msgq` command: thin verbs over the client, the worker, the simulator and the dev stack.

Exit codes: 0 success; 1 the job failed, or Redis could not be reached; 2 usage, validation,
bad configuration, unknown job or ID conflict; 130 interrupted (Ctrl-C).
Errors are one line on stderr; `msgq --debug ...` shows the traceback.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
from pydantic import ValidationError
from redis.exceptions import RedisError

from msgq.cli import (  # registered below
    api_info,
    caption_command,
    dev_command,
    operations,
    redis_cli,
    services,
)
from msgq.cli.common import (
    FAILED_STATUSES,
    QUIET_TYPOS,
    JobFailedError,
    dump,
    mask_url,
    redis_origin,
    use_dev_env,
    with_client,
)
from msgq.cli.typos import warn_about_typos
from msgq.client import Client
from msgq.cluster_guard import NAME_THE_CLUSTER
from msgq.errors import InvalidJobError, JobConflictError, JobNotFoundError
from msgq.extras import MissingExtraError
from msgq.jobs.ids import scoped_id
from msgq.liveness import SEEN_WITHIN_S
from msgq.partitions import PartitionCountError
from msgq.settings import Settings
from schemas import JobRecord, JobStatus, Lane, Priority, summarize

T = TypeVar("T")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """msgq: a job queue for the Anthropic Messages API.

    Configuration comes from the environment (REDIS_URL, ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL,
    MSGQ_*); `msgq settings` lists every setting, its value and where it came from. With
    REDIS_URL unset, commands use the Redis of a `msgq dev` running from this directory
    (./.msgq/dev.env).
    """
    if not os.environ.get(QUIET_TYPOS):  # `msgq dev` warned once for all its children
        warn_about_typos(_all_commands(ctx.command))
    if ctx.invoked_subcommand != "dev":  # dev writes the file; it must not read an old one
        use_dev_env()


def _all_commands(command: click.Command) -> list[click.Command]:
    subcommands = command.commands.values() if isinstance(command, click.Group) else []
    return [command, *(c for sub in subcommands for c in _all_commands(sub))]


@cli.command()
def settings() -> None:
    """List every setting: its variable, the value in effect and where it came from."""
    from msgq.cli.config import settings_rows

    for env, value, source, description in settings_rows(Settings()):
        click.echo(f"{env:<44} {value:<28} {source:<8} {description}".rstrip())
    # Only for a person reading the table: `msgq settings | grep X` printed it every time (on
    # stderr, so still on the terminal); configuration.md says the same.
    if sys.stdout.isatty():
        click.echo(
            "Webhook keys: a tenant signs with its webhook_secret (MSGQ_TENANTS_FILE), else with "
            "whsec_ + base64(HMAC-SHA256(MSGQ_WEBHOOK_SECRET's key, tenant name)); jobs without "
            "a tenant use MSGQ_WEBHOOK_SECRET itself. `msgq webhook-secret TENANT` prints one.",
            err=True,
        )


def read_json(path: str) -> Any:
    # Bytes, not text: a photo given by mistake is "not JSON", not a UTF-8 decoding crash.
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        msg = f"cannot read {path}: {exc.strerror}"
        raise click.UsageError(msg) from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        msg = f"{path} is not JSON (a Messages request as a JSON object is expected): {exc}"
        raise click.UsageError(msg) from None


@cli.command()
@click.argument("file")
@click.option("--id", "job_id", help="Caller-chosen job ID: submitting it again is a no-op.")
@click.option("--wait", is_flag=True, help="Wait for the job to end and print its record.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to --wait.")
@click.option("--callback-url", help="POST the final record here, signed (Standard Webhooks).")
@click.option(
    "--lane",
    type=click.Choice([lane.value for lane in Lane]),
    help="realtime (default); batch: Message Batches at half price, ends within 24 h; "
    "auto: batch when the deadline leaves room.",
)
@click.option(
    "--priority",
    type=click.Choice([p.value for p in Priority]),
    help="interactive, default or bulk (default: the tenant's, else default).",
)
@click.option("--tenant", "submit_tenant", help="Submit for this tenant (its ID is tenant:id).")
@click.option(
    "--anthropic-version",
    help="The API version the request was written for (default: MSGQ_ANTHROPIC_VERSION).",
)
@click.option(
    "--beta",
    "betas",
    multiple=True,
    help="A beta the request needs, sent as anthropic-beta (repeatable; "
    "default: MSGQ_ANTHROPIC_BETA).",
)
def submit(
    file: str,
    job_id: str | None,
    wait: bool,
    timeout: float,
    callback_url: str | None,
    lane: str | None,
    priority: str | None,
    submit_tenant: str | None,
    anthropic_version: str | None,
    betas: tuple[str, ...],
) -> None:
    """Enqueue one Messages request from FILE (`-` for stdin); prints the job ID."""
    request = read_json(file)

    async def run(client: Client) -> JobRecord | str:
        job = await client.submit(
            request,
            job_id=job_id,
            callback_url=callback_url,
            lane=lane,
            priority=priority,
            tenant=submit_tenant,
            anthropic_version=anthropic_version,
            betas=list(betas) or None,
        )
        if not await client.live_workers():
            _warn_no_worker(settings=client.settings)
        return await client.wait(job.id, timeout=timeout) if wait else job.id

    outcome = with_client(run)
    if isinstance(outcome, str):
        click.echo(outcome)
        return
    dump(outcome.model_dump(mode="json"))
    if outcome.status in FAILED_STATUSES:
        msg = f"job {outcome.id} {outcome.status.value}"
        raise JobFailedError(msg)


def _warn_no_worker(settings: Settings) -> None:
    """On stderr, so the job ID on stdout still pipes: the job is stored, but nothing runs it."""
    where = mask_url(settings.redis_url)
    if not settings.keys.is_default:  # a worker of another namespace never runs this job
        where += f" in namespace {settings.keys.namespace}"
    click.echo(
        f"msgq: warning: no worker has been seen on {where} in the last "
        f"{SEEN_WITHIN_S:g} s; the job waits until one starts (`msgq worker` or `msgq dev`, "
        "with this REDIS_URL and MSGQ_NAMESPACE)",
        err=True,
    )


TENANT = click.option(
    "--tenant", help="The HTTP API tenant that submitted the job (its ID is stored tenant:id)."
)


def _stored_id(job_id: str, tenant: str | None) -> str:
    return scoped_id(tenant, job_id)


def _by_id(job_id: str, tenant: str | None, fn: Callable[[Client, str], Awaitable[T]]) -> T:
    """`fn(client, stored ID)`; a miss without --tenant says how HTTP jobs are stored."""
    try:
        return with_client(lambda c: fn(c, _stored_id(job_id, tenant)))
    except JobNotFoundError as exc:
        if tenant is None and ":" not in job_id:
            msg = (
                f"{exc}; a job sent over the HTTP API is stored under its tenant: "
                f"add --tenant TENANT (the tenant of the API key that sent it)"
            )
            raise JobNotFoundError(msg) from None
        raise


@cli.command()
@click.argument("job_id")
@TENANT
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Say while it waits and why, print the text as it streams, then the record.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per line (with --follow: status, attempt and text events, then the "
    "record).",
)
def status(job_id: str, tenant: str | None, follow: bool, as_json: bool) -> None:
    """Print a job's record as JSON (--follow: its text first, like tail -f)."""
    if follow:
        from msgq.cli.follow import follow_to_terminal

        record = follow_to_terminal(Settings(), _stored_id(job_id, tenant), as_json=as_json)
        if record.status in FAILED_STATUSES:
            msg = f"job {job_id} {record.status.value}"
            raise JobFailedError(msg)
        return
    record = _by_id(job_id, tenant, Client.get)
    if as_json:
        click.echo(record.model_dump_json())
        return
    dump(record.model_dump(mode="json"))


@cli.command()
@click.argument("job_id")
@TENANT
def result(job_id: str, tenant: str | None) -> None:
    """Print a succeeded job's Message as JSON (exit 1 if it has none)."""
    record = _by_id(job_id, tenant, Client.get)
    if record.status is not JobStatus.SUCCEEDED or record.result is None:
        why = f": {record.error.message}" if record.error else ""
        msg = f"job {job_id} is {record.status.value}, no result{why}"
        raise JobFailedError(msg)
    dump(record.result)


@cli.command()
@click.argument("job_id")
@TENANT
def cancel(job_id: str, tenant: str | None) -> None:
    """Cancel a queued or retrying job (an in-progress one is aborted)."""
    record = _by_id(job_id, tenant, Client.cancel)
    dump(record.model_dump(mode="json"))
    if record.status.terminal and record.status is not JobStatus.CANCELED:
        # Still exit 0 (the job is not running, which is what cancel wants), but say so.
        click.echo(
            f"msgq: job {job_id} had already ended ({record.status.value}); nothing canceled",
            err=True,
        )


@cli.command()
@click.option("--status", "status_", type=click.Choice([s.value for s in JobStatus]))
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line.")
def jobs(status_: str | None, limit: int, as_json: bool) -> None:
    """List recent jobs, newest first."""
    wanted = JobStatus(status_) if status_ else None
    records = with_client(lambda c: c.list(status=wanted, limit=limit))
    for r in records:
        if as_json:
            click.echo(r.model_dump_json())
        else:
            error = r.error.type if r.error else ""
            click.echo(
                f"{r.id}  {r.status.value:<11} attempts={r.attempts}  {r.model or ''}  "
                f"{error}".rstrip()
            )


for _command in (
    caption_command.caption,
    operations.retry,
    operations.resume,
    operations.usage,
    operations.audit,
    operations.webhook_secret,
    api_info.models,
    api_info.count_tokens,
    services.worker,
    services.api,
    services.simulator,
    dev_command.dev,
    redis_cli.redis_cli,
):
    cli.add_command(_command)


def main() -> None:
    """Entry point: click's parsing, with msgq's exit codes and one-line errors."""
    debug = "--debug" in sys.argv[1:]
    try:
        cli.main(standalone_mode=False)
    except click.ClickException as exc:
        click.echo(f"msgq: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        sys.exit(130)
    except (InvalidJobError, JobNotFoundError, JobConflictError, MissingExtraError) as exc:
        _fail(exc, 2, debug)
    except (RedisError, OSError, TimeoutError, PartitionCountError) as exc:
        _fail(exc, 1, debug)
    except ValidationError as exc:  # this far up, a bad environment variable: Settings()
        if exc.title != Settings.__name__:
            _fail(exc, 1, debug, prefix="internal error: ")
        from msgq.cli.config import describe_settings_error

        _fail(exc, 2, debug, message=describe_settings_error(exc))
    except Exception as exc:  # a bug of ours: still one line, the traceback only with --debug
        _fail(exc, 1, debug, prefix="internal error: ")


def _origin() -> str:
    try:
        return redis_origin(Settings())
    except ValidationError:  # the settings that failed are reported on their own
        return "the configured Redis"


def _fail(
    exc: BaseException, code: int, debug: bool, prefix: str = "", message: str | None = None
) -> None:
    if debug:
        traceback.print_exception(exc)
    message = message or str(exc) or type(exc).__name__
    if isinstance(exc, InvalidJobError) and exc.errors:
        message = "invalid request: " + summarize(exc.errors)
    if isinstance(exc, RedisError) and message.startswith(("MOVED ", "ASK ", "CROSSSLOT")):
        message = f"REDIS_URL reaches a node of a Redis Cluster: {NAME_THE_CLUSTER}"
    elif isinstance(exc, RedisError):
        detail = re.sub(r"//[^@/]*@", "//", message)
        message = f"cannot reach Redis ({type(exc).__name__}: {detail}); it used {_origin()}"
    click.echo(f"msgq: {prefix}{message}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
