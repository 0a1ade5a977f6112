"""The dispatcher's ticket: where the dispatch and job packages meet.

A job the dispatcher admitted carries a ticket (`msgq:admitted:<id>`): its rate-limit capacity
(the fleet's bucket and, for a tenant with a share cap, the tenant's) and budget were reserved
at dispatch, so the worker sends at once. A ticket stays with its job in Redis until the job
either sends (`HeldTicket.consume`: the ticket moves into the job's ledger, `msgq.ledger`, in
the same step) or ends or is handed back without sending (`HeldTicket.release`, which refunds
what it reserved). Both remove the key and act only if they removed it, so whatever path a job
takes (a deferral for a slot, a pause, a Redis error, a cancel, a shutdown, a crash and a re-run
elsewhere) its reservation is settled exactly once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis

from msgq.keys import Keyspace
from msgq.ledger import TICKET
from msgq.tenancy.budgets import Budgets, Reservation
from msgq.tenancy.scheduling import Estimate
from worker.ledger import NOT_SENT, Ledgers, capacities, settle_capacity
from worker.ratelimit import RateLimiter

ORPHAN_AFTER_MS = 5_000  # a ticket this old whose job is not in arq's queue is an orphan


@dataclass(frozen=True)
class Ticket:
    limited: bool  # capacity was reserved in the fleet's buckets at dispatch
    reservation: Reservation | None
    estimate: Estimate | None = None
    data: dict[str, Any] = field(default_factory=dict)  # as stored (`capacities` reads it)


def parse_ticket(raw: bytes | None) -> Ticket | None:
    if raw is None:
        return None
    data = orjson.loads(raw)
    reservation = None
    if "micro_usd" in data:
        reservation = Reservation(data["tenant"], data["day"], data["month"], data["micro_usd"])
    estimate = Estimate.loads(data["estimate"]) if "estimate" in data else None
    return Ticket(bool(data.get("limited")), reservation, estimate, data)


def parse_or_none(raw: bytes | None) -> Ticket | None:
    """A ticket that cannot be read reserved nothing this code can give back: it is dropped
    (the key is deleted by whichever run consumes or releases it)."""
    try:
        return parse_ticket(raw)
    except (ValueError, KeyError, TypeError):
        return Ticket(limited=False, reservation=None)


@dataclass
class HeldTicket:
    """The ticket a running job read at pick-up, until it is consumed or released."""

    ledgers: Ledgers
    job_id: str
    ticket: Ticket | None
    _done: bool = field(init=False)

    def __post_init__(self) -> None:
        self._done = self.ticket is None

    @property
    def limited(self) -> bool:
        """Capacity for this job was reserved at dispatch (and not yet settled by this run)."""
        return self.ticket is not None and self.ticket.limited

    async def consume(self) -> Ticket | None:
        """The job is about to send: the ticket's reservations move into its ledger, where the
        attempt's ending settles them. None when there was none, or another run of the job
        settled it first."""
        if self._done:
            return None
        self._done = True
        part = self.ledgers.limiter.keys.for_job(self.job_id)  # the job's partition
        moved = await self.ledgers.consume_ticket(
            part.admitted_key(self.job_id), part.tickets_key, self.job_id
        )
        return self.ticket if moved is not None else None

    async def release(self) -> None:
        """The job is not sending on this run: give back what the ticket reserved. Safe to call
        on every path and more than once."""
        if self._done:
            return
        self._done = True
        redis = self.ledgers.redis
        if await take(redis, self.ledgers.limiter.keys, self.job_id):
            await refund(redis, self.ledgers.limiter, self.ticket)


async def take(redis: Redis, keys: Keyspace, job_id: str) -> bool:
    """Delete the job's ticket; True only for the one caller that deleted it."""
    async with redis.pipeline(transaction=False) as pipe:  # DEL alone decides who took it
        pipe.delete(keys.admitted_key(job_id))
        pipe.zrem(keys.for_job(job_id).tickets_key, job_id)
        deleted, _ = await pipe.execute()
    return bool(deleted)


async def refund(redis: Redis, limiter: RateLimiter, ticket: Ticket | None) -> None:
    """Give back what admission reserved for a job that did not send. Call it only after
    `take` returned True, which makes sure it happens once."""
    if ticket is None:
        return
    for capacity in capacities(TICKET, ticket.data):
        await settle_capacity(redis, limiter, capacity, NOT_SENT)
    if ticket.reservation is not None:
        model = ticket.estimate.model if ticket.estimate else "unknown"
        await Budgets(redis, limiter.keys).settle(ticket.reservation, 0.0, model)


async def release_orphans(redis: Redis, limiter: RateLimiter) -> int:
    """Tickets whose job left arq's queue without a worker consuming or releasing them (it was
    canceled or expired after admission, or its payload was lost): released here, once. The
    limiter's keyspace is the deployment's."""
    keys = limiter.keys
    cutoff_ms = int(time.time() * 1000) - ORPHAN_AFTER_MS
    released = 0
    async with redis.pipeline(transaction=False) as pipe:  # each partition's, in a round trip
        for part in keys.parts:  # (a master each on a cluster): every 5 s, idle or not
            pipe.zrangebyscore(part.tickets_key, "-inf", cutoff_ms, start=0, num=500)
        old_tickets = await pipe.execute()
    for part, ids in zip(keys.parts, old_tickets, strict=True):
        for raw_id in ids:
            job_id = raw_id.decode()
            if await redis.zscore(part.queue, job_id) is not None:
                continue  # still queued or running: its worker settles it
            raw = await redis.get(part.admitted_key(job_id))
            if await take(redis, keys, job_id):
                await refund(redis, limiter, parse_or_none(raw))
                released += 1
    return released
