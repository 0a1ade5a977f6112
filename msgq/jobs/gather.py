"""Newest-first reads of one index kept per partition, merged as if it were one sorted set.

With partitions (`msgq.partitions`) each partition keeps its own copy of a job index (all jobs,
a tenant's, a status's), in its own hash slot. A listing reads the P copies and merges them:
each copy is read a chunk at a time, newest first, and a heap hands out the newest entry of
any copy next. Memory is P chunks, whatever the index's size, and a page of N entries reads
about N + P x chunk entries at most.

The position is a cursor, not a rank: `(score, member)` of the last entry handed out. Ranks
mean nothing across P sets, and a cursor stays right when entries are added or pruned before
it. Ties are ordered as Redis orders them in ZREVRANGE (by member, descending), so equal
scores (jobs created in the same millisecond) are neither skipped nor repeated across pages.
"""

from __future__ import annotations

import heapq
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

CHUNK = 200  # entries read from one copy at a time


@dataclass(frozen=True, order=True)
class Cursor:
    """Where a newest-first walk stopped: the last entry handed out."""

    score: int
    member: str


@dataclass
class _Copy:
    """One partition's copy of the index, read a chunk at a time below `after`."""

    source: int
    redis: Redis
    key: str
    after: Cursor | None
    buffer: list[tuple[int, str]] = field(default_factory=list)
    done: bool = False

    async def refill(self, chunk: int) -> None:
        """The next chunk below `after`, newest first: by rank just below the cursor's own
        entry (looked up at each chunk, O(log N): entries added or pruned above it meanwhile
        move the ranks, not the cursor), so a run of equal scores (a batch's jobs share one)
        costs no more than any other."""
        rank = await self._rank_after()
        if rank is None:  # the cursor's entry has gone (pruned): found by its score
            await self._refill_by_score(chunk)
            return
        while True:
            raw = await self.redis.zrevrange(self.key, rank, rank + chunk - 1, withscores=True)
            rank += len(raw)
            below = [e for e in _entries(raw) if self._below(e)]  # an entry added meanwhile
            if below or len(raw) < chunk:
                break
        self._took(below, done=len(raw) < chunk)

    async def _rank_after(self) -> int | None:
        """The rank just below the cursor's entry; None when that entry is not in the copy."""
        if self.after is None:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrevrank(self.key, self.after.member)
            pipe.zscore(self.key, self.after.member)
            rank, score = await pipe.execute()
        if rank is None or score is None or int(score) != self.after.score:
            return None
        return int(rank) + 1

    async def _refill_by_score(self, chunk: int) -> None:
        """ZREVRANGEBYSCORE bounds by score only, so entries of the cursor's own score at or
        above its member come back too: they are skipped over."""
        top = "+inf" if self.after is None else self.after.score
        start = 0
        while True:
            raw = await self.redis.zrevrangebyscore(
                self.key, top, "-inf", start=start, num=chunk, withscores=True
            )
            below = [e for e in _entries(raw) if self._below(e)]
            if below or len(raw) < chunk:
                break
            start += len(raw)
        self._took(below, done=len(raw) < chunk)

    def _took(self, below: list[tuple[int, str]], *, done: bool) -> None:
        self.buffer, self.done = below, done
        if below:
            self.after = Cursor(*below[-1])

    def _below(self, entry: tuple[int, str]) -> bool:
        after = self.after
        if after is None:
            return True
        score, member = entry
        return score < after.score or (score == after.score and member < after.member)


def _entries(raw: list[tuple[bytes, float]]) -> list[tuple[int, str]]:
    return [(int(score), member.decode()) for member, score in raw]


async def newest_first(
    copies: Sequence[tuple[Redis, str]],
    *,
    after: Cursor | None = None,
    chunk: int = CHUNK,
) -> AsyncGenerator[tuple[Cursor, int], None]:
    """Every entry of the merged index below `after`, newest first, as (its cursor, the
    position in `copies` of the copy holding it). Stop iterating when the page is full."""
    walks = [_Copy(n, redis, key, after) for n, (redis, key) in enumerate(copies)]
    heap: list[tuple[int, _Neg, int]] = []
    for walk in walks:
        await walk.refill(chunk)
        _push(heap, walk)
    while heap:
        neg_score, neg_member, source = heapq.heappop(heap)
        yield Cursor(-neg_score, neg_member.member), source
        walk = walks[source]
        walk.buffer.pop(0)
        if not walk.buffer and not walk.done:
            await walk.refill(chunk)
        _push(heap, walk)


def _push(heap: list[tuple[int, _Neg, int]], walk: _Copy) -> None:
    if walk.buffer:
        score, member = walk.buffer[0]
        heapq.heappush(heap, (-score, _Neg(member), walk.source))


@dataclass(frozen=True)
class _Neg:
    """A member ordered in reverse, so the min-heap pops the greatest member of a score first."""

    member: str

    def __lt__(self, other: _Neg) -> bool:
        return self.member > other.member
