"""Spend without a tenant is reported as a row of its own, so the totals equal what the records
cost (issue 34, item 8: 122 untenanted jobs, $0.047, were missing from every report)."""

from __future__ import annotations

import asyncio
import re

import httpx
import orjson

from msgq.client import Client
from msgq.settings import Settings
from tests.conftest import StartWorker
from tests.test_cli import msgq
from tests.test_ui import ADMIN_KEY, sign_in, text_request, ui, ui_settings

__all__ = ["ui", "ui_settings"]  # fixtures


async def test_usage_and_the_dashboard_count_spend_without_a_tenant(
    settings: Settings, client: Client, start_worker: StartWorker, ui: httpx.AsyncClient
) -> None:
    """Two jobs without a tenant and one of tenant-a: `msgq usage` (text and JSON) and the
    dashboard show a no-tenant row, and their totals equal the sum of the records' cost_usd."""
    await start_worker()
    jobs = [
        await client.submit(text_request("one")),
        await client.submit(text_request("two, a little longer")),
        await client.submit(text_request("three"), tenant="tenant-a"),
    ]
    records = [await client.wait(job.id, timeout=30) for job in jobs]
    costs = [r.cost_usd for r in records]
    assert all(cost is not None and cost > 0 for cost in costs)
    total = sum(c for c in costs if c is not None)
    untenanted = sum(c for r, c in zip(records, costs, strict=True) if c and r.tenant is None)

    done = await asyncio.to_thread(msgq, settings, "usage", "--json")
    assert done.returncode == 0, done.stderr
    rows = [orjson.loads(line) for line in done.stdout.splitlines()]
    by_tenant = {row["tenant"]: row["spent_today_usd"] for row in rows}
    assert by_tenant.keys() == {None, "tenant-a"}
    assert abs(by_tenant[None] - untenanted) < 1e-5
    assert abs(sum(by_tenant.values()) - total) < 1e-5

    text = (await asyncio.to_thread(msgq, settings, "usage")).stdout
    assert re.search(r"^\(no tenant\) +today \$", text, re.M)
    assert re.search(rf"^total +today \${total:.4f} ", text, re.M)

    await sign_in(ui, ADMIN_KEY)
    overview = (await ui.get("/ui/part/overview")).text
    assert '<th scope="row">(no tenant)</th>' in overview
    footer = re.search(r"<tfoot><tr><th scope=\"row\">total</th><td>([^<]+)</td>", overview)
    assert footer is not None and footer[1] == f"${total:.4f}"
