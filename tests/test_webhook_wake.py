"""The webhook dispatcher is woken by work, not its poll: a job's webhook becoming owed wakes it,
a retry is looked for when it falls due, and a stream of wakes is served by paced passes. The
poll here is a minute, so each delivery below would wait that long without the feature."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from msgq.channels import listeners
from msgq.client import Client
from msgq.jobs.store import JobStore
from msgq.settings import Settings
from tests.conftest import KEYS, Sim, StartWorker, eventually
from tests.test_crash import BODY
from tests.test_dispatch_pacing import assert_paced, wake_burst
from tests.test_webhooks import Receiver, receiver, verified
from tests.test_webhooks import settings as webhook_settings
from worker.webhooks import WAKE_GAP_S, WebhookDispatcher

__all__ = ["receiver", "webhook_settings"]  # the fixtures, imported


@pytest.fixture
def settings(webhook_settings: Settings) -> Settings:
    # A lease (attempt timeout + 5 s) past the test's deadline too: the claim's next due time
    # is a lease's end, so only the retry's own due time brings it in time.
    return webhook_settings.model_copy(update={"webhook_poll_s": 60.0, "webhook_timeout_s": 30.0})


async def _subscribed(redis: Redis) -> bool:
    return await listeners(redis, KEYS, KEYS.webhooks_wake) > 0


async def test_a_jobs_webhook_is_delivered_at_once_without_a_poll(
    client: Client, redis: Redis, receiver: Receiver, sim: Sim, start_worker: StartWorker
) -> None:
    """The first job's webhook may be found by the passes at start; the second's, owed once
    the dispatcher idles (its next due time a lease's end, 35 s away), only by the wake."""
    await start_worker()
    await eventually(lambda: _subscribed(redis))
    first = await client.submit(BODY, callback_url=f"{receiver.url}/first")
    await eventually(lambda: _received(receiver, 1), timeout_s=15)
    second = await client.submit(BODY, callback_url=f"{receiver.url}/woken")
    await eventually(lambda: _received(receiver, 2), timeout_s=15)
    assert [verified(r)["id"] for r in receiver.requests] == [first.id, second.id]


async def test_a_retry_is_looked_for_when_it_falls_due(
    client: Client, redis: Redis, receiver: Receiver, sim: Sim, start_worker: StartWorker
) -> None:
    """500 then 200: the second attempt goes when its backoff ends (0.05 s here), not at the
    next poll."""
    receiver.statuses = [500]
    await start_worker()
    await eventually(lambda: _subscribed(redis))
    job = await client.submit(BODY, callback_url=receiver.url)

    async def delivered() -> bool:
        webhook = (await client.get(job.id)).webhook
        return webhook is not None and webhook.status == "delivered"

    await eventually(delivered, timeout_s=15)
    assert receiver.count() == 2


class CountingDispatcher(WebhookDispatcher):
    """The real loop and wake; each pass only notes when it ran."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.passes: list[float] = []

    async def run_once(self) -> int:
        self.woken.clear()
        self.passes.append(time.monotonic())
        return 0


async def test_a_stream_of_wakes_is_served_by_paced_passes(
    settings: Settings, redis: Redis
) -> None:
    """Every worker hears every wake: a pass a wake would read the outbox once a job ended, in
    each worker. Passes are at least WAKE_GAP_S apart, and fewer than the wakes."""
    dispatcher = CountingDispatcher(redis, JobStore.from_settings(redis, settings), settings)
    loop = asyncio.create_task(dispatcher.run_forever())
    try:
        await eventually(lambda: _subscribed(redis))
        await eventually(lambda: _passed(dispatcher, 2))  # at start, then the subscription's
        first = len(dispatcher.passes)
        wakes = await wake_burst(dispatcher.woken, 10 * WAKE_GAP_S, every_s=0.001)
        await eventually(lambda: _passed(dispatcher, first + 2))
        assert_paced(dispatcher.passes[first - 1 :], WAKE_GAP_S, wakes, most=13)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def _received(receiver: Receiver, n: int) -> bool:
    return receiver.count() >= n


async def _passed(dispatcher: CountingDispatcher, n: int) -> bool:
    return len(dispatcher.passes) >= n
