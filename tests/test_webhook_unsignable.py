"""A callback the fleet cannot sign is refused at submission (issue 34, item 6): before, it was
accepted and never delivered, and only the record's `webhook.last_error` said why."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from msgq.client import Client
from msgq.errors import InvalidJobError, JobNotFoundError
from msgq.settings import Settings
from msgq.tenancy.policy import publish as publish_policy
from tests.test_crash import BODY
from tests.test_webhooks import SECRET

HOOK = "http://127.0.0.1:9/hooks"  # loopback, allowed below; never called here


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A fleet that signs (its MSGQ_WEBHOOK_SECRET) with loopback targets allowed."""
    return settings.model_copy(
        update={"webhook_allow": "127.0.0.1/32", "webhook_secret": SecretStr(SECRET)}
    )


async def test_a_callback_is_refused_up_front_when_the_fleet_cannot_sign_it(
    settings: Settings, client: Client, redis: Redis
) -> None:
    """Workers without MSGQ_WEBHOOK_SECRET: a submit with a callback is refused naming the
    setting, nothing stored; once the fleet has one, the same submit is accepted."""
    await publish_policy(redis, settings.model_copy(update={"webhook_secret": None}))
    with pytest.raises(InvalidJobError, match="MSGQ_WEBHOOK_SECRET") as refused:
        await client.submit(BODY, job_id="hook-1", callback_url=HOOK)
    assert [e["loc"] for e in refused.value.errors] == ["callback_url"]
    with pytest.raises(JobNotFoundError):
        await client.get("hook-1")
    await publish_policy(redis, settings)
    async with Client.from_url(settings.redis_url, settings) as fresh:  # no cached policy
        job = await fresh.submit(BODY, job_id="hook-1", callback_url=HOOK)
    assert job.created


async def test_a_batch_callback_is_refused_up_front_when_the_fleet_cannot_sign_it(
    settings: Settings, redis: Redis, api: httpx.AsyncClient
) -> None:
    """The same for a Message Batch's callback_url: 400 naming MSGQ_WEBHOOK_SECRET, no batch."""
    await publish_policy(redis, settings.model_copy(update={"webhook_secret": None}))
    answer = await api.post(
        "/v1/messages/batches",
        json={"requests": [{"custom_id": "a", "params": BODY}], "callback_url": HOOK},
    )
    assert answer.status_code == 400, answer.text
    assert "MSGQ_WEBHOOK_SECRET" in answer.json()["error"]["message"]
    assert (await api.get("/v1/messages/batches")).json()["data"] == []
