"""What msgq plugs into the queue's loop: its one task, the lifecycle hooks, the refusal hook
and the reads taken with each claim. Plain values and callables, so the loop knows nothing of
msgq's job code and msgq's job code nothing of arq."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from worker.queue.claim import Prefetch, QueueJob

Ctx = dict[str, Any]  # the worker's context: its services, built once at start-up


@dataclass(frozen=True)
class Hooks:
    run: Callable[[Ctx, QueueJob, dict[str, Any]], Coroutine[Any, Any, None]]  # the task
    startup: Callable[[Ctx], Awaitable[None]]
    shutdown: Callable[[Ctx], Awaitable[None]]
    refused: Callable[[Ctx, QueueJob, bytes | None], Awaitable[None]]  # arq's failure record
    prefetch: Prefetch | None = None  # read with each job in its claim (record, ticket, ledger)
    # Fleet-wide reads (the pause, the cool-downs) taken once beside each claim, in the same
    # round trip: not inside it, since on a cluster they are on another shard than the job.
    fleet_reads: tuple[tuple[str, str], ...] = ()
