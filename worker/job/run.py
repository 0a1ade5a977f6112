"""`JobRun`: one run of one job on this worker, as one explicit value.

Everything a run holds that outlives a single call is here and passed to the functions that
need it: the queue's handle (so a terminal record also ends the job in the queue), what the
claim read with the job (`Prefetched`), the dispatcher's ticket, and whether the job's ledger
(`msgq.ledger`, in Redis) holds reservations this run has not settled yet. Nothing of it rides
in a ContextVar or in the worker's ctx: a cancel or shutdown path sees what the run holds, and
a crash leaves the reservations in Redis for the next run or the reconciler to settle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from msgq.keys import Keyspace
from worker.queue.claim import QueueJob
from worker.ticket import HeldTicket


class Prefetched(NamedTuple):
    """What the worker reads with the job itself, in its claiming script (`prefetch_reads`),
    then what it reads of the fleet beside the claim (`fleet_reads`)."""

    record: bytes | None  # the record's JSON
    ticket: bytes | None  # the dispatcher's ticket: read, not taken (see `HeldTicket`)
    ledger: int  # the job's ledger holds reservations: a previous run did not settle them
    paused: int  # the fleet is paused
    cooling: int  # some model class cools down after a 429

    @classmethod
    def of(cls, values: tuple[Any, ...] | list[Any]) -> Prefetched | None:
        """The claim's reads; None when they are not the reads of `prefetch_reads`."""
        return cls._make(values) if len(values) == len(cls._fields) else None


def prefetch_reads(keys: Keyspace, job_id: str) -> list[tuple[str, str]]:
    """The job's reads of `Prefetched`, in its order, as the claim script takes them (all in
    the job's partition: the claim script touches one partition's keys)."""
    return [
        ("GET", keys.record_key(job_id)),
        ("GET", keys.admitted_key(job_id)),
        ("EXISTS", keys.ledger_key(job_id)),
    ]


def fleet_reads(keys: Keyspace) -> tuple[tuple[str, str], ...]:
    """The rest of `Prefetched`: the fleet's gates, read beside the claim. Advisory there (a
    pause or a cool-down that starts just after is seen when the job is metered)."""
    return (("EXISTS", keys.pause_key), ("EXISTS", keys.cooling_key))


@dataclass
class JobRun:
    """One run of one job: created by the task from the queue's handle, passed to every step."""

    job_id: str
    queue: QueueJob | None = None  # None: a run the queue did not start (a test, a rehome)
    prefetched: Prefetched | None = None
    ticket: HeldTicket | None = None  # the dispatcher's, once read at pick-up
    held: bool = False  # the ledger holds reservations of this run, not yet settled
    sending: bool = False  # the call began: it may have reached the API
    # The attempt this run began (set just before its write): while its record says it is in
    # progress, its call may be in flight, so a shutdown notes that attempt as cut.
    attempt: int | None = None

    @classmethod
    def of(cls, job: QueueJob) -> JobRun:
        return cls(job.job_id, job, Prefetched.of(job.prefetched))

    def finish_commands(self) -> list[tuple[str, ...]]:
        """What ends the job in the queue, written with its terminal record (see
        `transitions.finish`)."""
        return self.queue.finish_commands() if self.queue is not None else []

    def mark_ended(self) -> None:
        if self.queue is not None:
            self.queue.mark_ended()
