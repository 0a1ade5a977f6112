"""`msgq models` (what msgq knows per model, and where each part came from) and
`msgq count-tokens FILE` (the API's own count, outside the Messages buckets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from msgq.cli.common import dump, with_client
from msgq.client import Client
from msgq.model_catalog import Catalog
from msgq.pricing import prices_for
from schemas.capabilities import capabilities_for, table_models
from schemas.model_info import ModelLimits


def model_rows(catalog: Catalog | None, prices_file: Path | None) -> list[dict[str, Any]]:
    """One row per model the table or the Models API knows; `*_from` says the source."""
    listed = {m.id: m for m in catalog.limits().values()} if catalog else {}
    rows = []
    for model in sorted(set(table_models()) | set(listed)):
        caps = capabilities_for(model)
        limits: ModelLimits | None = listed.get(model)
        prices = prices_for(model, prices_file)
        from_override = prices is not None and prices != caps.prices
        rows.append(
            {
                "model": model,
                "limits_from": f"models api ({catalog.fetched_at:%Y-%m-%d %H:%M}Z)"
                if limits and catalog
                else "none (models.toml rules only)",
                "max_input_tokens": limits.max_input_tokens if limits else None,
                "max_tokens": limits.max_tokens if limits else None,
                "thinking": sorted(limits.thinking_types or ()) if limits else None,
                "effort": sorted(limits.effort_levels or ()) if limits else None,
                "batch": limits.batch if limits else None,
                "rules_from": "models.toml" if caps.known else "defaults (permissive)",
                "prefill": caps.prefill,
                "sampling": caps.sampling,
                "max_images": caps.max_images,
                "prices_from": "MSGQ_PRICES_FILE"
                if from_override
                else ("models.toml" if prices else "none (cost_usd null)"),
                "prices": prices.model_dump(exclude_none=True) if prices else None,
            }
        )
    return rows


def _price_cell(row: dict[str, Any]) -> str:
    prices = row["prices"]
    if not prices:
        return "-"
    cell = f"${prices['input']:g}/${prices['output']:g}"
    tier = prices.get("long_context")
    if tier:
        cell += f" (>{tier['above_input_tokens'] // 1000}k ${tier['input']:g}/${tier['output']:g})"
    return cell


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Every row as JSON, with all its fields.")
def models(as_json: bool) -> None:
    """What msgq knows per model: limits (Models API), rules and prices (models.toml)."""

    async def run(client: Client) -> list[dict[str, Any]]:
        await client.catalog.limits()
        return model_rows(client.catalog.catalog, client.settings.prices_file)

    rows = with_client(run)
    if as_json:
        dump(rows)
        return
    click.echo(f"{'MODEL':<28} {'MAX IN':>9} {'MAX OUT':>8} {'PRICE IN/OUT':<28} SOURCES")
    for row in rows:
        sources = f"limits: {row['limits_from']}; rules: {row['rules_from']}; "
        sources += f"prices: {row['prices_from']}"
        click.echo(
            f"{row['model']:<28} {row['max_input_tokens'] or '-':>9} "
            f"{row['max_tokens'] or '-':>8} {_price_cell(row):<28} {sources}"
        )


@click.command("count-tokens")
@click.argument("file")
@click.option("--anthropic-version", help="Count under this API version.")
@click.option("--beta", "betas", multiple=True, help="A beta to send (repeatable).")
def count_tokens(file: str, anthropic_version: str | None, betas: tuple[str, ...]) -> None:
    """Print the API's input-token count for the request in FILE (`-` for stdin)."""
    from msgq.cli.main import read_json

    request = read_json(file)

    async def run(client: Client) -> int:
        return await client.count_tokens(
            request, anthropic_version=anthropic_version, betas=list(betas) or None
        )

    click.echo(with_client(run))
