"""The scheduler's queues as the dispatcher reads them (`Head`: one waiting job). Admitted jobs
leave them for arq's queue in `worker.dispatch.handoff`."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from msgq.tenancy.scheduling import Estimate, Waiting
from schemas import Priority

ADMITTED_TTL_S = 3600
HEADS_PER_QUEUE = 64


@dataclass
class Head:
    """One waiting job at the front of its scheduler queue. Its identity comes from the job's
    own entry (`Waiting`), never from the queue's key."""

    queue: str
    job_id: str
    waiting: Waiting
    backlog: int  # how many jobs were read from its queue (HEADS_PER_QUEUE: maybe more wait)

    @property
    def cls(self) -> str:
        return self.waiting.queue.cls

    @property
    def priority(self) -> Priority:
        return self.waiting.queue.priority

    @property
    def tenant(self) -> str:
        return self.waiting.queue.tenant or "_"

    @property
    def estimate(self) -> Estimate:
        return self.waiting.estimate

    @property
    def tokens(self) -> int:
        return self.estimate.input_tokens + self.estimate.output_tokens


def advance(queues: dict[str, deque[Head]], head: Head, *, blocked: bool) -> bool:
    """Move past a head that was dispatched or had left; a blocked tenant's head stays (the
    policy skips the tenant until it is unblocked). True when the heads read from a queue ran
    out while it may hold more: the tick must re-read, or that tenant would drop out of the
    comparison while it is still backlogged."""
    if blocked:
        return False
    queues[head.queue].popleft()
    if queues[head.queue]:
        return False
    del queues[head.queue]
    return head.backlog >= HEADS_PER_QUEUE
