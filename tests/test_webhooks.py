"""Webhooks: a terminal job (or an ended batch) is POSTed, signed per Standard Webhooks, to its
callback_url, at least once, durably, and never to a private address unless allowlisted.

The receiver is a real aiohttp server on loopback (allowlisted here); signatures are verified
with the `standardwebhooks` library from PyPI, as a receiver would, not with msgq's own code.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import anthropic
import httpx
import pytest
from aiohttp import web
from prometheus_client import REGISTRY
from pydantic import SecretStr
from redis.asyncio import Redis
from standardwebhooks import Webhook, WebhookVerificationError

from msgq.audit import audit
from msgq.client import Client
from msgq.connections import connect
from msgq.dev.embedded_redis import free_port
from msgq.dev.stack import msgq_command
from msgq.errors import InvalidJobError
from msgq.settings import Settings
from msgq.tenancy.tenants import TenantsFileError, parse_tenants
from msgq.webhooks.outbox import Entry, copies
from msgq.webhooks.signing import derived_secret
from msgq.webhooks.targets import Allow, refusal
from schemas import JobStatus
from tests.conftest import (
    KEY_A,
    KEYS,
    SAMPLES,
    Sim,
    StartWorker,
    eventually,
    stop_workers,
    worker_env,
    zcard_parts,
)
from tests.test_cli import msgq
from tests.test_crash import BODY

SECRET = "whsec_" + base64.b64encode(b"msgq-test-webhook-key-0123456789").decode()
TENANT_SECRET = "whsec_" + base64.b64encode(b"tenant-a-own-webhook-key-abcdefg").decode()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook endpoint: records each request; answers `statuses` in turn, then 200."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    hold_first: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(Received(request.path, dict(request.headers), await request.read()))
        if self.hold_first and len(self.requests) == 1:
            await self.release.wait()  # the sender is killed meanwhile
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200, text="ok")

    def count(self) -> int:
        return len(self.requests)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", r.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    r.url = f"http://127.0.0.1:{port}"
    yield r
    r.release.set()
    await runner.cleanup()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """conftest's settings plus webhooks: loopback allowlisted, fast polls and backoff."""
    return settings.model_copy(
        update={
            "webhook_allow": "127.0.0.1/32",
            "webhook_secret": SecretStr(SECRET),
            "webhook_poll_s": 0.05,
            "webhook_backoff_base_s": 0.05,
            "webhook_backoff_max_s": 0.2,
            "webhook_timeout_s": 2.0,
        }
    )


def verified(received: Received, secret: str = SECRET) -> dict[str, Any]:
    payload: dict[str, Any] = Webhook(secret).verify(received.body, received.headers)
    return payload


async def outbox_size(redis: Redis) -> int:
    """Webhooks owed, by the entries and by their due times (equal unless something broke), in
    every copy of the outbox (a job's is in its partition's)."""
    entries = due = 0
    for copy in copies(KEYS):
        entries += await cast(Awaitable[int], redis.hlen(copy.webhooks_key))
        due += await redis.zcard(copy.webhooks_due_key)
    return max(entries, due)


def deliveries(outcome: str) -> float:
    return REGISTRY.get_sample_value("msgq_webhook_deliveries_total", {"outcome": outcome}) or 0.0


async def test_each_terminal_job_is_delivered_once_signed(
    settings: Settings,
    client: Client,
    redis: Redis,
    receiver: Receiver,
    sim: Sim,
    start_worker: StartWorker,
) -> None:
    """Two workers, 12 jobs from the client and one from raw Redis: one signed POST each, the
    final record as the body, the record says `delivered`; a job without a URL gets none."""
    delivered_before = deliveries("delivered")
    await start_worker()
    await start_worker()
    ids = [
        (await client.submit(BODY, callback_url=f"{receiver.url}/hooks/{n}")).id for n in range(12)
    ]
    raw_spec = {"request": BODY, "callback_url": f"{receiver.url}/hooks/raw"}
    now_ms = int(time.time() * 1000)
    payload = {"t": 1, "f": "run_message", "a": [], "k": raw_spec, "et": now_ms}
    await redis.set(KEYS.arq_job_key("raw-hook"), json.dumps(payload))
    await redis.zadd(settings.keys.for_job("raw-hook").queue, {"raw-hook": now_ms})
    ids.append("raw-hook")
    silent = (await client.submit(BODY)).id
    await eventually(lambda: _count_is(receiver, 13))
    for job_id in [*ids, silent]:
        await client.wait(job_id, timeout=20)
    by_id = {verified(r)["id"]: r for r in receiver.requests}
    assert sorted(by_id) == sorted(ids)  # 13 requests, 13 distinct jobs: each exactly once
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 13
    body = verified(by_id[ids[0]])
    record = await client.get(ids[0])
    assert body["status"] == "succeeded" and body["result"] == record.result
    assert "webhook" not in body and by_id[ids[0]].path == "/hooks/0"
    assert record.webhook is not None and record.webhook.status == "delivered"
    assert record.webhook.attempts == 1 and record.webhook.delivered_at is not None
    assert (await client.get(silent)).webhook is None
    assert await outbox_size(redis) == 0
    assert deliveries("delivered") - delivered_before == 13
    assert (await audit(redis, KEYS)).clean


async def _count_is(receiver: Receiver, n: int) -> bool:
    return receiver.count() >= n


async def test_receiver_errors_are_retried_until_delivered(
    client: Client, receiver: Receiver, sim: Sim, start_worker: StartWorker
) -> None:
    """500, 500, 500, then 200: delivered on the 4th attempt, the same webhook-id each time,
    each attempt signed afresh; the record counts the attempts, and once delivered shows no
    error from the earlier ones beside `delivered`."""
    retried_before = deliveries("retried")
    receiver.statuses = [500, 500, 500]
    await start_worker()
    job = await client.submit(BODY, callback_url=receiver.url)

    async def delivered() -> bool:
        webhook = (await client.get(job.id)).webhook
        return webhook is not None and webhook.status == "delivered"

    await eventually(delivered)
    webhook = (await client.get(job.id)).webhook
    assert webhook is not None
    assert webhook.attempts == 4 and webhook.last_error is None
    assert receiver.count() == 4
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    assert all(verified(r)["id"] == job.id for r in receiver.requests)
    assert deliveries("retried") - retried_before == 3


async def test_a_webhook_that_never_succeeds_fails_after_its_window(
    settings: Settings, client: Client, redis: Redis, receiver: Receiver, start_worker: StartWorker
) -> None:
    """Always 503, with a 1 s window: `failed` with the last error, the outbox entry gone."""
    receiver.statuses = [503] * 1000
    await start_worker(settings.model_copy(update={"webhook_max_age_s": 1.0}))
    job = await client.submit(BODY, callback_url=receiver.url)

    async def failed() -> bool:
        webhook = (await client.get(job.id)).webhook
        return webhook is not None and webhook.status == "failed"

    await eventually(failed)
    webhook = (await client.get(job.id)).webhook
    assert webhook is not None and webhook.last_error == "HTTP 503: ok"
    assert webhook.attempts == receiver.count() >= 2
    assert await outbox_size(redis) == 0
    assert (await client.get(job.id)).status is JobStatus.SUCCEEDED  # the job itself untouched


def spawn_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    env = worker_env(
        settings,
        MSGQ_WEBHOOK_ALLOW="127.0.0.1/32",
        MSGQ_WEBHOOK_SECRET=SECRET,
        MSGQ_WEBHOOK_POLL_S="0.05",
        MSGQ_WEBHOOK_TIMEOUT_S="2",
    )
    return subprocess.Popen(msgq_command("worker"), env=env, stdout=out, stderr=out)


async def test_sigkill_mid_delivery_is_delivered_after_restart(
    settings: Settings,
    client: Client,
    redis: Redis,
    receiver: Receiver,
    sim: Sim,
    tmp_path: Path,
) -> None:
    """The receiver holds the first POST; the worker (and its dispatcher) is SIGKILLed; the
    entry survives, its lease lapses, and a new worker delivers it with the same webhook-id."""
    receiver.hold_first = True
    first = spawn_worker(settings, tmp_path / "a.log")
    try:
        job = await client.submit(BODY, callback_url=receiver.url)
        await eventually(lambda: _count_is(receiver, 1))
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    record = await client.get(job.id)
    assert record.status is JobStatus.SUCCEEDED
    assert record.webhook is not None and record.webhook.status == "pending"
    outbox = KEYS.for_job(job.id).webhooks_key
    assert await cast(Awaitable[bool], redis.hexists(outbox, f"job:{job.id}"))
    second = spawn_worker(settings, tmp_path / "b.log")
    try:

        async def delivered() -> bool:
            webhook = (await client.get(job.id)).webhook
            return webhook is not None and webhook.status == "delivered"

        await eventually(delivered, timeout_s=30)
    finally:
        codes = stop_workers(second)
    assert codes == [0]
    assert receiver.count() == 2 and sim.received == 1
    assert receiver.requests[0].headers["webhook-id"] == receiver.requests[1].headers["webhook-id"]
    assert verified(receiver.requests[1])["id"] == job.id
    assert await outbox_size(redis) == 0
    assert (await audit(redis, KEYS)).clean


def _app_client(settings: Settings) -> Any:
    from msgq.http.app import create_app

    return create_app(settings)


async def test_http_tenant_default_target_and_own_secret(
    settings: Settings, receiver: Receiver, sim: Sim, start_worker: StartWorker, tmp_path: Path
) -> None:
    """A tenant's default callback_url and its own secret: the HTTP job (no URL given) is
    delivered there, signed with the tenant's secret (not the global one), under its public ID."""
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(
        f'[tenants.tenant-a]\ncallback_url = "{receiver.url}/a"\n'
        f'webhook_secret = "{TENANT_SECRET}"\n'
    )
    custom = settings.model_copy(
        update={"tenants_file": tenants, "api_keys": SecretStr(f"tenant-a:{KEY_A}")}
    )
    await start_worker(custom)
    app = _app_client(custom)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://msgq.test",
            headers={"x-api-key": KEY_A, "anthropic-version": "2023-06-01"},
        ) as api,
    ):
        created = await api.post("/v1/jobs", json={"request": BODY, "id": "order-1"})
        assert created.status_code == 202
        assert created.json()["callback_url"] == f"{receiver.url}/a"
        await eventually(lambda: _count_is(receiver, 1))
        shown = (await api.get("/v1/jobs/order-1")).json()
    body = verified(receiver.requests[0], TENANT_SECRET)
    assert body["id"] == "order-1" and body.pop("tenant") == "tenant-a"
    assert {k: v for k, v in body.items()} == {k: v for k, v in shown.items() if k != "webhook"}
    with pytest.raises(WebhookVerificationError):
        verified(receiver.requests[0], SECRET)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://10.1.2.3/hook", "private"),
        ("http://192.168.0.10/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "cloud metadata"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://localhost:9/hook", "loopback"),
        ("http://100.64.0.1/", "carrier-grade NAT"),
        ("ftp://example.com/hook", "scheme must be http or https"),
    ],
)
async def test_refused_targets_are_refused_at_submission(
    settings: Settings, redis: Redis, url: str, why: str
) -> None:
    """Private, metadata, loopback (a name resolving to it), CGNAT and non-http targets:
    InvalidJobError naming callback_url, and nothing is enqueued."""
    plain = settings.model_copy(update={"webhook_allow": None})
    async with Client(connect(settings.redis_url), plain) as client:
        with pytest.raises(InvalidJobError, match=f"callback_url: .*{why}") as caught:
            await client.submit(BODY, callback_url=url)
    assert caught.value.errors is not None and caught.value.errors[0]["loc"] == "callback_url"
    assert await zcard_parts(redis, lambda k: k.index_key) == 0


async def test_refused_target_answers_422_over_http_and_exit_2_in_the_cli(
    api: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    """POST /v1/jobs answers 422 naming callback_url; `msgq submit --callback-url` exits 2; a
    batch's callback_url is refused with 400, as the Batches API refuses a bad field."""
    answer = await api.post(
        "/v1/jobs", json={"request": BODY, "callback_url": "http://10.0.0.5/hook"}
    )
    assert answer.status_code == 422
    assert answer.json()["error"]["errors"][0]["loc"] == "callback_url"
    done = await asyncio.to_thread(
        msgq,
        settings,
        "submit",
        str(SAMPLES / "requests" / "text.json"),
        "--callback-url",
        "http://169.254.169.254/",
    )
    assert done.returncode == 2 and "callback_url" in done.stderr and "metadata" in done.stderr
    batch = await api.post(
        "/v1/messages/batches",
        json={"requests": [{"custom_id": "a", "params": BODY}], "callback_url": "http://[::1]/"},
    )
    assert batch.status_code == 400 and "callback_url" in batch.json()["error"]["message"]
    assert (
        await zcard_parts(redis, lambda k: k.index_key) == 0
        and await redis.zcard(KEYS.batches_key) == 0
    )


def test_tenant_webhook_secret_is_checked_at_start_up() -> None:
    """A tenant's webhook_secret that is not whsec_ + base64 is one line naming the field."""
    with pytest.raises(TenantsFileError, match=r"tenants\.acme\.webhook_secret: .*whsec_"):
        parse_tenants('[tenants.acme]\nwebhook_secret = "hunter2"\n')


async def test_delivery_rechecks_the_target(
    settings: Settings, client: Client, receiver: Receiver, sim: Sim, start_worker: StartWorker
) -> None:
    """Allowed when submitted, refused when delivered (the workers do not allowlist it): no
    request is sent, and the record says why."""
    refused_before = deliveries("refused")
    await start_worker(settings.model_copy(update={"webhook_allow": None}))
    job = await client.submit(BODY, callback_url=receiver.url)

    async def refused() -> bool:
        webhook = (await client.get(job.id)).webhook
        return webhook is not None and webhook.attempts >= 2

    await eventually(refused)
    webhook = (await client.get(job.id)).webhook
    assert webhook is not None and webhook.status == "pending"
    assert webhook.last_error is not None and "loopback" in webhook.last_error
    assert receiver.count() == 0 and deliveries("refused") - refused_before >= 2


async def test_batch_callback_fires_once_when_the_batch_ends(
    api_server: str, redis: Redis, receiver: Receiver, sim: Sim, start_worker: StartWorker
) -> None:
    """The SDK passes callback_url in extra_body; the batch's 5 jobs end; one POST, the batch
    object and its tenant as the body (ended, 5 succeeded), signed with the tenant's derived
    key; no per-job webhooks."""
    await start_worker()
    requests: list[Any] = [{"custom_id": f"r{i}", "params": BODY} for i in range(5)]
    async with anthropic.AsyncAnthropic(base_url=api_server, api_key=KEY_A) as sdk:
        batch = await sdk.messages.batches.create(
            requests=requests, extra_body={"callback_url": f"{receiver.url}/batch"}
        )

        async def ended() -> bool:
            got = await sdk.messages.batches.retrieve(batch.id)
            return bool(got.processing_status == "ended")

        await eventually(ended, timeout_s=30)
        await eventually(lambda: _count_is(receiver, 1))
    assert await outbox_size(redis) == 0  # delivered and removed: nothing more to send
    assert receiver.count() == 1
    body = verified(receiver.requests[0], derived_secret(SECRET, "tenant-a"))
    assert body["id"] == batch.id and body["type"] == "message_batch"
    assert body["tenant"] == "tenant-a"
    assert body["processing_status"] == "ended" and body["request_counts"]["succeeded"] == 5
    assert body["results_url"] == f"/v1/messages/batches/{batch.id}/results"


async def test_audit_flags_orphaned_and_overdue_outbox_entries(redis: Redis) -> None:
    """An entry whose job is gone, and one pending past 24 h, are violations."""
    old_ms = int((time.time() - 25 * 3600) * 1000)
    entry = Entry(
        kind="job", ref="gone", url="https://example.com/", webhook_id="msg_1", created_ms=old_ms
    )
    gone, lonely = KEYS.for_job("gone"), KEYS.for_job("lonely")  # a job's outbox: its partition's
    await cast(Awaitable[int], redis.hset(gone.webhooks_key, entry.key, entry.model_dump_json()))
    await redis.zadd(gone.webhooks_due_key, {entry.key: old_ms})
    await redis.zadd(lonely.webhooks_due_key, {"job:lonely": old_ms})
    report = await audit(redis, KEYS)
    assert set(report.findings) == {
        "webhook entry without its job or batch",
        "webhook pending longer than its 24 h window",
        "webhook due without its entry",
    }


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("fc00::1", "private"),
        ("169.254.10.1", "link-local"),
        ("fe80::1", "link-local"),
        ("169.254.169.254", "a cloud metadata address"),
        ("fd00:ec2::254", "a cloud metadata address"),
        ("100.64.1.1", "carrier-grade NAT"),
        ("224.0.0.251", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "private"),
        ("8.8.8.8", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_address_policy(address: str, why: str | None) -> None:
    """Each kind of non-public address is named; public ones pass."""
    import ipaddress

    assert refusal(ipaddress.ip_address(address)) == why


def test_allowlist_parses_cidrs_and_hostnames() -> None:
    """`MSGQ_WEBHOOK_ALLOW` takes CIDRs, single addresses and hostnames."""
    import ipaddress

    allow = Allow.parse(" 10.0.0.0/8, 127.0.0.1 ,Hooks.Internal. ")
    assert allow.admits(ipaddress.ip_address("10.9.8.7"))
    assert allow.admits(ipaddress.ip_address("127.0.0.1"))
    assert not allow.admits(ipaddress.ip_address("127.0.0.2"))
    assert allow.hosts == frozenset({"hooks.internal"})


async def test_a_corrupt_outbox_entry_is_dropped_and_others_still_go(
    client: Client, redis: Redis, receiver: Receiver, sim: Sim, start_worker: StartWorker
) -> None:
    """An entry msgq did not write (not its JSON) is dropped, not retried forever, and the
    webhooks claimed with it are delivered."""
    junk = KEYS.for_job("junk")  # a job's outbox: its partition's
    await cast(Awaitable[int], redis.hset(junk.webhooks_key, "job:junk", b"not json"))
    await redis.zadd(junk.webhooks_due_key, {"job:junk": 0})
    await start_worker()
    job = await client.submit(BODY, callback_url=receiver.url)
    await eventually(lambda: _count_is(receiver, 1))
    await eventually(lambda: _outbox_empty(redis))
    assert verified(receiver.requests[0])["id"] == job.id


async def _outbox_empty(redis: Redis) -> bool:
    return await outbox_size(redis) == 0
