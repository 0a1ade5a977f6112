"""The operators' verbs: retry failed jobs, lift a spend-limit pause, spend per tenant, audit,
and a tenant's webhook signing secret."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import click
import orjson

from msgq.cli.common import JobFailedError, dump, with_client
from msgq.client import Client
from msgq.jobs.ids import scoped_id
from msgq.settings import Settings
from schemas import JobStatus


@click.command()
@click.argument("job_ids", nargs=-1)
@click.option("--all-failed", is_flag=True, help="Every failed job still within retention.")
@click.option(
    "--tenant", help="The HTTP API tenant that submitted the jobs (their IDs are tenant:id)."
)
def retry(job_ids: tuple[str, ...], all_failed: bool, tenant: str | None) -> None:
    """Re-run failed or expired jobs with their original request (attempts start again).

    Only where a retry can change the outcome: not for a permanent error (invalid_request_error,
    not_found_error, validation_error), whose request would fail the same way again.
    """
    if not job_ids and not all_failed:
        msg = "give job IDs or --all-failed"
        raise click.UsageError(msg)
    stored = [scoped_id(tenant, i) for i in job_ids]

    async def run(client: Client) -> list[tuple[str, str]]:
        for job_id in stored:
            await client.get(job_id)  # JobNotFoundError (exit 2) before anything is requeued
        ids = list(stored)
        if all_failed:
            failed = await client.list(status=JobStatus.FAILED, limit=100_000)
            ids += [r.id for r in failed if tenant is None or r.tenant == tenant]
        return [(i, (await client.retry_explained(i))[1]) for i in ids]

    outcomes = with_client(run)
    for job_id, why_not in outcomes:
        click.echo(f"{job_id}  {'requeued' if not why_not else 'not retried: ' + why_not}")
    if job_ids and any(why_not for _, why_not in outcomes):
        msg = "some jobs were not retried (the reason is on each line)"
        raise click.UsageError(msg)


@click.command()
def resume() -> None:
    """Lift a spend-limit pause so the fleet sends again."""

    async def run() -> str | None:
        from msgq.connections import connect
        from worker.ratelimit import RateLimiter

        settings = Settings()
        async with connect(settings) as redis:
            limiter = RateLimiter(redis, settings.keys, {})
            reason = await limiter.paused()
            await limiter.resume()
            return reason

    reason = asyncio.run(run())
    click.echo(f"resumed (was paused: {reason})" if reason else "the fleet was not paused")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object per tenant.")
def usage(as_json: bool) -> None:
    """Spend per tenant today and this month, against budgets (operators)."""
    from msgq.connections import connect
    from msgq.tenancy.budgets import Budgets
    from msgq.tenancy.tenants import load_tenants

    settings = Settings()
    tenants = load_tenants(settings.tenants_file)

    async def run() -> list[dict[str, Any]]:
        async with connect(settings) as redis:
            budgets = Budgets(redis, settings.keys)
            names = sorted(set(tenants.names()) | set(await budgets.tenants()))
            return [await budgets.usage(t, tenants.get(t)) for t in names]

    rows = asyncio.run(run())
    for row in rows:
        if as_json:
            click.echo(orjson.dumps(row).decode())
            continue
        day = _budgeted(row["spent_today_usd"], row["budget_usd_day"])
        month = _budgeted(row["spent_month_usd"], row["budget_usd_month"])
        click.echo(f"{row['tenant'] or '(no tenant)':<24} today {day:<24} month {month}")
    if not rows and not as_json:
        click.echo("nothing has been spent yet")
    elif not as_json:
        today_usd = sum(float(row["spent_today_usd"]) for row in rows)
        month_usd = sum(float(row["spent_month_usd"]) for row in rows)
        click.echo(f"{'total':<24} today {_budgeted(today_usd, None):<24} month ${month_usd:.4f}")


def _budgeted(spent: float, budget: float | None) -> str:
    return f"${spent:.4f}" + ("" if budget is None else f" of ${budget:.2f}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
def audit(as_json: bool) -> None:
    """Check the queue's invariants (every job can end; counts, locks, TTLs); exit 1 if broken."""
    from msgq.audit import AuditReport
    from msgq.audit import audit as run_audit
    from msgq.connections import connect
    from msgq.partitions import PartitionClients, check_partitions

    async def run() -> AuditReport:
        settings = Settings()
        async with connect(settings) as redis:
            await check_partitions(PartitionClients(redis, settings.keys), settings.keys)
            return await run_audit(redis, settings.keys, workers=True)

    report = asyncio.run(run())
    if as_json:
        dump(report.as_dict())
    else:
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(report.by_status.items())) or "none"
        click.echo(f"records: {report.records} ({statuses}); batches: {report.batches}")
        for finding in report.findings.values():
            click.echo(f"VIOLATION {finding.check}: {finding.count}  e.g. {finding.examples}")
        click.echo("audit: clean" if report.clean else "audit: violations found")
    if not report.clean:
        msg = f"{sum(f.count for f in report.findings.values())} violation(s)"
        raise JobFailedError(msg)


@click.command("webhook-secret")
@click.argument("tenant")
def webhook_secret(tenant: str) -> None:
    """Print the secret TENANT's receivers verify webhooks with (admin use: it is a secret).

    The tenant's webhook_secret from MSGQ_TENANTS_FILE, else derived from MSGQ_WEBHOOK_SECRET:
    whsec_ + base64(HMAC-SHA256(its key, TENANT)). The source goes to stderr.
    """
    from msgq.tenancy.tenants import TENANT_PATTERN
    from msgq.webhooks.secrets import NoWebhookSecretError
    from msgq.webhooks.secrets import webhook_secret as secret_for

    if not re.match(TENANT_PATTERN, tenant):
        msg = f"tenant {tenant!r} must be 1-64 of A-Z a-z 0-9 _ -"
        raise click.UsageError(msg)
    try:
        secret, source = secret_for(Settings(), tenant)
    except NoWebhookSecretError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(secret)
    click.echo(f"({source})", err=True)
