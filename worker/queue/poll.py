"""The worker's poll of every partition in one round trip: in each, the head of its queue and
the abort requests, with the stale requests pruned.

A running job is scored at its lock's expiry (`worker.queue.claim.CLAIM`), so the due jobs at
the head of a queue are waiting ones: the poll reads as many of them as the worker has free
slots, and the first entry not yet due, which tells when to look again (a retry, a deferral,
a running job whose worker may die). Two commands a partition for an idle worker, and no
script: nothing built inside Redis from a key prefix.

Each partition has its own arq queue and abort set (`msgq.keys.Keyspace.part`). With one
partition this is arq's poll: up to four commands. With more, up to four a partition, still
one round trip; a claim is then made per partition (`by_partition`), since one claim script
touches one partition's keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from arq.constants import abort_job_max_age
from redis.asyncio.client import Pipeline

from msgq.keys import Keyspace


@dataclass
class Polled:
    """What one poll read: due job IDs (at most the free slots), the earliest time a job not
    yet due comes due (ms, None when none), and the IDs whose abort was asked for."""

    ready: list[bytes]
    later: int | None
    aborts: list[bytes]


def ask(
    pipe: Pipeline,
    keys: Keyspace,
    count: int,
    now_ms: int,
    *,
    picking: bool = True,
    aborts: bool = True,
    prune: bool = True,
) -> None:
    """Queue the poll's commands on `pipe`: the due jobs and the first one not yet due only
    when `picking` (`count` free slots), the abort requests only when `aborts` (some job runs
    here: a request for one that has not started is found by its claim), their prune only when
    `prune`; so an idle worker's poll is two commands a partition."""
    for part in keys.parts:
        if picking:
            pipe.zrangebyscore(part.queue, "-inf", now_ms, start=0, num=count)
            pipe.zrangebyscore(part.queue, f"({now_ms}", "+inf", start=0, num=1, withscores=True)
        if aborts:
            pipe.zrange(part.abort_key, 0, -1)
        if prune:
            # Abort requests older than a minute (arq's own prune compares seconds with ms and
            # removes nothing, so the set it reads every poll only grew).
            pipe.zremrangebyscore(part.abort_key, min="-inf", max=now_ms - abort_job_max_age * 1000)


def read(
    replies: list[Any],
    keys: Keyspace,
    count: int,
    now_ms: int,
    rotate: int = 0,
    *,
    picking: bool = True,
    aborts: bool = True,
    prune: bool = True,
) -> Polled:
    """The poll's replies, as `ask` queued them, merged over the partitions. The due jobs are
    taken a round at a time, one from each partition, starting at partition `rotate` (a poll
    counter): when there are fewer free slots than due jobs, no partition waits behind another,
    and each partition's own jobs go oldest first."""
    per_part = 2 * int(picking) + int(aborts) + int(prune)
    due: list[list[bytes]] = []
    later: int | None = None
    requested: list[bytes] = []
    for n in range(keys.partitions):
        mine = replies[n * per_part : (n + 1) * per_part]
        if picking:
            due.append(list(mine[0])[:count])
            if mine[1]:  # the first entry not yet due (a retry, a deferral, a running job)
                at = int(mine[1][0][1])
                later = at if later is None else min(later, at)
        if aborts:
            requested += mine[2 * int(picking)]  # ZRANGE's reply, after the queue's two
    ready: list[bytes] = []
    order = [due[(rotate + n) % len(due)] for n in range(len(due))] if due else []
    for round_ in range(max((len(ids) for ids in order), default=0)):
        ready += [ids[round_] for ids in order if round_ < len(ids)]
    return Polled(ready[:count], later, requested)


def by_partition(keys: Keyspace, job_ids: list[str]) -> dict[int, list[str]]:
    """Job IDs grouped by partition, each group in the order given."""
    groups: dict[int, list[str]] = {}
    for job_id in job_ids:
        groups.setdefault(keys.partition_of(job_id), []).append(job_id)
    return groups
