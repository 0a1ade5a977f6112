"""Listings across partitions (msgq.jobs.gather): P copies of an index read newest first and
merged as one sorted set, paged by cursor, on a real Redis (and on the cluster in
`make test-cluster`, each copy in its own partition's slot)."""

from __future__ import annotations

import random

from redis.asyncio import Redis

from msgq.connections import partition_clients
from msgq.jobs.gather import Cursor, newest_first
from msgq.settings import Settings


async def test_pages_of_the_merged_copies_hold_every_entry_once_in_redis_order(
    settings: Settings, redis: Redis
) -> None:
    clients = partition_clients(settings.model_copy(update={"partitions": 4}), redis)
    rng = random.Random(7)
    entries: list[tuple[int, str]] = []
    copies = []
    for part, client in clients.each():
        key = part.index_key
        scores = {f"job-{part.partition}-{n:04d}": rng.randrange(40) for n in range(300)}
        scores |= {f"tie-{part.partition}-{n:03d}": 1000 for n in range(150)}  # > a chunk
        await client.zadd(key, scores)
        entries += [(score, member) for member, score in scores.items()]
        copies.append((client, key))
    expected = sorted(entries, key=lambda e: (e[0], e[1]), reverse=True)

    seen: list[tuple[int, str]] = []
    after: Cursor | None = None
    while True:
        page = []
        async for cursor, source in newest_first(copies, after=after, chunk=50):
            assert cursor.member.split("-")[1] == str(source)  # the copy holding it
            page.append(cursor)
            if len(page) == 97:
                break
        if not page:
            break
        seen += [(c.score, c.member) for c in page]
        after = page[-1]
    assert seen == expected


async def test_entries_pruned_behind_the_walk_do_not_make_it_skip(
    settings: Settings, redis: Redis
) -> None:
    """A listing prunes entries whose record expired as it reads: entries it already handed
    out leave the index mid-walk. A walk by rank alone would then skip as many entries as were
    pruned; each chunk is found from the cursor's own entry instead. 2,000 entries of one
    score (a batch's jobs share one) in one copy, read 100 at a time."""
    key = settings.keys.part(0).index_key
    members = [f"job-{n:05d}" for n in range(2000)]
    await redis.zadd(key, dict.fromkeys(members, 7))
    seen: list[str] = []
    async for cursor, _ in newest_first([(redis, key)], chunk=100):
        seen.append(cursor.member)
        if len(seen) % 10 == 0:
            await redis.zrem(key, seen[-2])  # behind the walk, as the listing's pruning does
    assert seen == sorted(members, reverse=True)
