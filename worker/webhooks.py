"""Delivers the webhook outbox. Every worker runs one; an entry is claimed under a lease (longer
than one attempt can take), so one dispatcher at a time holds it, and a killed one's lease lapses
for another. Delivered on a 2xx; otherwise retried with backoff until the window
(`MSGQ_WEBHOOK_MAX_AGE_S`, 24 h) is spent, then `failed`. At least once: a crash after the POST
and before the entry is removed sends it again, with the same `webhook-id`.

A dispatcher reads the outbox when a job's webhook becomes owed (a wake on the deployment's
channel), when the next entry falls due (a retry, a lease), and otherwise every
`MSGQ_WEBHOOK_POLL_S` (a batch's webhook, a lost wake): an idle worker read every copy of the
outbox each second, a round trip a master on a Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import httpx
import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from msgq.batches import Batches, BatchMeta
from msgq.cancel import cancel_and_wait
from msgq.channels import subscriber
from msgq.jobs.records import utcnow
from msgq.jobs.store import JobStore
from msgq.settings import Settings
from msgq.webhooks import signing
from msgq.webhooks.outbox import Entry, Outbox, public_body
from msgq.webhooks.secrets import NoWebhookSecretError, webhook_secret
from msgq.webhooks.targets import Allow, TargetRefusedError, resolve
from schemas import WebhookState
from worker.job.backoff import backoff_delay_s
from worker.metrics import WEBHOOKS

log = structlog.get_logger("msgq.webhooks")

LEASE_MARGIN_S = 5.0  # beyond the attempt's own timeout: Redis round trips, a slow event loop
CLAIM_LIMIT = 16  # entries claimed (and delivered concurrently) per pass
# A wake within this long of the last pass's start waits out the rest: under a stream of
# webhook jobs ending, a worker reads the outbox at most 10 times a second, not once a job.
WAKE_GAP_S = 0.1
USER_AGENT = "msgq-webhooks/1"


@dataclass(frozen=True)
class Outcome:
    """One attempt: `error` None when delivered; `refused` when the SSRF check said no."""

    error: str | None = None
    refused: bool = False


class WebhookDispatcher:
    def __init__(self, redis: Redis, store: JobStore, settings: Settings) -> None:
        self.redis, self.store, self.settings = redis, store, settings
        self.outbox = Outbox(redis, settings.keys)
        self.batches = Batches(redis, store, settings)
        self.allow = Allow.parse(settings.webhook_allow)
        self.woken = asyncio.Event()  # a webhook became owed (`_listen`)
        self._soonest_ms: int | None = None  # a retry this worker scheduled in its last pass
        # No keep-alive: connections go to checked IPs, and a pooled TLS connection opened for one
        # hostname (its SNI) must never carry a request for another host on the same address.
        self.http = httpx.AsyncClient(
            timeout=settings.webhook_timeout_s,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    @property
    def lease_s(self) -> float:
        return self.settings.webhook_timeout_s + LEASE_MARGIN_S

    async def run_forever(self) -> None:
        listener = asyncio.ensure_future(self._listen())
        try:
            while True:
                started = time.monotonic()
                try:
                    claimed = await self.run_once()
                except RedisError as exc:
                    log.warning("webhooks.redis_unavailable", error=type(exc).__name__)
                    claimed = 0
                except Exception as exc:  # a bug or a corrupt entry must not stop deliveries
                    log.error("webhooks.pass_failed", error=f"{type(exc).__name__}: {exc}"[:500])
                    claimed = 0
                if claimed < CLAIM_LIMIT:
                    await self._idle(started)
        finally:
            await cancel_and_wait([listener])
            await self.http.aclose()

    async def _idle(self, started: float) -> None:
        """Until a wake (then at least WAKE_GAP_S after the last pass began), the next entry's
        due time (a retry's, a lapsing lease's), or the poll (`MSGQ_WEBHOOK_POLL_S`)."""
        wait_s = self.settings.webhook_poll_s
        due = [ms for ms in (self.outbox.next_due_ms, self._soonest_ms) if ms is not None]
        if due:
            wait_s = min(wait_s, max(0.0, min(due) / 1000 - time.time()))
        with contextlib.suppress(TimeoutError):  # not wait_for: `msgq.cancel`
            async with asyncio.timeout(wait_s):
                await self.woken.wait()
                await asyncio.sleep(started + WAKE_GAP_S - time.monotonic())

    async def _listen(self) -> None:
        """Set `woken` on each message on the deployment's `webhooks_wake` (a job's webhook
        became owed: `msgq.webhooks.outbox.announce`)."""
        keys = self.settings.keys
        while True:
            try:
                async with subscriber(self.redis, keys) as pubsub:
                    await pubsub.subscribe(keys.webhooks_wake)
                    self.woken.set()  # subscribed: one pass finds what was owed before
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self.woken.set()
            except Exception as exc:  # without wakes the outbox is still read each poll
                log.warning("webhooks.wake_unavailable", error=type(exc).__name__)
                await asyncio.sleep(1.0)

    async def run_once(self) -> int:
        """Claim what is due and deliver it; returns how many were claimed."""
        self.woken.clear()  # a wake from now on is for entries this claim may not see
        self._soonest_ms = None  # the claim reads every due time again
        claimed = await self.outbox.claim(lease_s=self.lease_s, limit=CLAIM_LIMIT)
        await asyncio.gather(*(self.deliver(entry, raw) for entry, raw in claimed))
        return len(claimed)

    async def deliver(self, entry: Entry, claimed: bytes) -> None:
        body = await self._body(entry)
        if body is None:  # deleted, or past its retention: nothing left to send
            await self.outbox.remove(entry, claimed)
            WEBHOOKS.labels("gone").inc()
            log.warning("webhook.gone", entry=entry.key)
            return
        try:
            async with asyncio.timeout(self.settings.webhook_timeout_s):
                outcome = await self._attempt(entry, body)
        except TimeoutError:
            outcome = Outcome(f"no answer within {self.settings.webhook_timeout_s:g}s")
        attempts = entry.attempts + 1
        if outcome.error is None:
            state = WebhookState(
                status="delivered",
                attempts=attempts,
                last_error=None,  # earlier attempts' errors are over; the log keeps them
                delivered_at=utcnow(),
            )
            await self._record(entry, state)  # first: a crash now re-sends, never loses
            await self.outbox.remove(entry, claimed)
            WEBHOOKS.labels("delivered").inc()
            log.info("webhook.delivered", entry=entry.key, attempts=attempts)
            return
        await self._failed(entry, claimed, attempts, outcome)

    async def _failed(self, entry: Entry, claimed: bytes, attempts: int, outcome: Outcome) -> None:
        now_s = time.time()
        window_end_s = entry.created_ms / 1000 + self.settings.webhook_max_age_s
        state = WebhookState(status="pending", attempts=attempts, last_error=outcome.error)
        if now_s >= window_end_s:
            await self._record(entry, state.model_copy(update={"status": "failed"}))
            await self.outbox.remove(entry, claimed)
            WEBHOOKS.labels("failed").inc()
            log.warning("webhook.failed", entry=entry.key, attempts=attempts, error=outcome.error)
            return
        delay_s = backoff_delay_s(
            attempts,
            base_s=self.settings.webhook_backoff_base_s,
            max_s=self.settings.webhook_backoff_max_s,
        )
        updated = entry.model_copy(update={"attempts": attempts, "last_error": outcome.error})
        await self._record(entry, state)
        # The last try falls at the end of the window, not past it.
        due_s = min(now_s + delay_s, window_end_s)
        await self.outbox.reschedule(updated, claimed, due_s=due_s)
        due_ms = int(due_s * 1000)  # this worker looks again then, unpolled
        self._soonest_ms = due_ms if self._soonest_ms is None else min(self._soonest_ms, due_ms)
        WEBHOOKS.labels("refused" if outcome.refused else "retried").inc()
        log.info(
            "webhook.retry_scheduled",
            entry=entry.key,
            attempts=attempts,
            delay_s=round(delay_s, 3),
            error=outcome.error,
        )

    async def _record(self, entry: Entry, state: WebhookState) -> None:
        if entry.kind == "job":
            await self.outbox.set_state(entry.ref, state)

    async def _body(self, entry: Entry) -> bytes | None:
        if entry.kind == "job":
            record = await self.store.get(entry.ref)
            return None if record is None else public_body(record)
        raw = await self.redis.get(self.settings.keys.batch_key(entry.ref))
        if raw is None:
            return None
        # The worker does not know the API's public address: results_url is a path on it.
        meta = BatchMeta.model_validate_json(raw)
        view = await self.batches.view(meta, base_url="")
        # The tenant is signed with the body, so a receiver can check whose batch it is.
        return orjson.dumps({**view.model_dump(mode="json"), "tenant": meta.tenant})

    def _key(self, entry: Entry) -> bytes:
        secret, _ = webhook_secret(self.settings, entry.tenant)
        return signing.secret_key(secret)

    async def _attempt(self, entry: Entry, body: bytes) -> Outcome:
        """One signed POST to the checked address (re-resolved now: DNS may have changed)."""
        try:
            target = await resolve(entry.url, self.allow)
        except TargetRefusedError as exc:
            return Outcome(f"refused: {exc}", refused=True)
        try:
            key = self._key(entry)
        except (signing.SecretFormatError, NoWebhookSecretError) as exc:
            return Outcome(f"webhook secret: {exc}")
        url = httpx.URL(entry.url)
        headers = {
            **signing.headers(key, entry.webhook_id, int(time.time()), body),
            "host": url.netloc.decode("ascii"),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            response = await self.http.post(
                url.copy_with(host=target.address),
                content=body,
                headers=headers,
                extensions=extensions,
            )
        except httpx.HTTPError as exc:
            return Outcome(f"{type(exc).__name__}: {exc}"[:500])
        if response.is_success:
            return Outcome()
        return Outcome(f"HTTP {response.status_code}: {response.text[:200]}")
