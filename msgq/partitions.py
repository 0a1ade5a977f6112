"""A deployment's partitions: a client for each, and the count every process must agree on.

A deployment's jobs are spread over `MSGQ_PARTITIONS` partitions by a hash of the job ID
(`msgq.keys.Keyspace.for_job`). On a Redis Cluster each partition has its own hash tag, so its
keys live in their own slot, and the partitions spread over the masters: `PartitionClients`
gives the client for each, one pinned to the master serving its slot (`msgq.cluster`), made on
first use. On one node (or behind Sentinel) every partition shares the deployment's client.

**The count is fixed while jobs exist.** A job's partition is its ID's hash modulo the count,
so a process with another count would look for jobs where they are not, and write new ones
where the others do not look. The count is kept in Redis (`Keyspace.partitions_key`; none
stored means 1, the layout before partitions). `check_partitions` runs when a worker, the API,
a client or a `msgq` command starts: the same count passes; another count is accepted (and
stored) only when the deployment holds no job in the stored layout and no worker runs, else
the start fails with one line naming the stored count. Two processes starting at the same
moment with different counts on an empty, idle deployment can both pass; change the count with
the fleet stopped.
"""

from __future__ import annotations

from redis.asyncio import Redis

from msgq.keys import Keyspace
from msgq.liveness import live_workers

# KEYS: the count's key. ARGV: the count read before, the count wanted. Stored only if it is
# still the one read ('' for none): a process that changed it meanwhile wins, and is seen.
SWAP_COUNT = """
local stored = redis.call('GET', KEYS[1]) or ''
if stored ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""


class PartitionCountError(RuntimeError):
    """MSGQ_PARTITIONS differs from the count the deployment's jobs were written with."""


class PartitionClients:
    """The Redis client of each partition of a deployment: `root`, the deployment's own, for
    all of them. On a cluster `root` (made by `msgq.connections.connect`) sends a partition's
    commands to the master serving its slot (`msgq.slot_routing`); on one node or behind
    Sentinel they all share it."""

    def __init__(self, root: Redis, keys: Keyspace) -> None:
        self.root = root
        self.keys = keys.root

    def for_keys(self, keys: Keyspace) -> Redis:
        """The client serving `keys` (a partition's keyspace, or the deployment's own)."""
        return self.root

    def for_job(self, job_id: str) -> tuple[Keyspace, Redis]:
        """The keyspace and client of the partition holding `job_id`."""
        return self.keys.for_job(job_id), self.root

    def each(self) -> list[tuple[Keyspace, Redis]]:
        """Every partition's keyspace and client, in order (what a listing gathers from)."""
        return [(keys, self.root) for keys in self.keys.parts]


async def stored_partitions(redis: Redis, keys: Keyspace) -> tuple[bytes, int | None]:
    """The count stored for the deployment as stored (b"" when none) and as a number (None
    when there is none, or it is not one: a layout of 1 is assumed then)."""
    raw = await redis.get(keys.partitions_key) or b""
    return raw, int(raw) if raw.isdigit() else None


async def jobs_held(clients: PartitionClients, keys: Keyspace) -> int:
    """How many jobs the deployment holds in `keys`' layout: records in each partition's
    listing index and IDs in its arq queue, and IDs in the raw producers' inbox (one, the
    deployment's)."""
    held = int(await clients.root.zcard(keys.root.sched_inbox))
    for part in keys.parts:
        redis = clients.for_keys(part)
        async with redis.pipeline(transaction=False) as pipe:
            pipe.zcard(part.index_key)
            pipe.zcard(part.queue)
            held += sum(int(n) for n in await pipe.execute())
    return held


async def check_partitions(clients: PartitionClients, keys: Keyspace) -> None:
    """Raise PartitionCountError when `keys.partitions` is not the deployment's stored count
    and the deployment holds jobs in the stored layout, or workers are running (they poll the
    stored layout, and would never see a job written in another); otherwise store the count."""
    raw, _ = await stored_partitions(clients.for_keys(keys.root), keys.root)
    await check_against(clients, keys, raw)


async def check_against(clients: PartitionClients, keys: Keyspace, raw: bytes) -> None:
    """`check_partitions` with the stored count as read (`raw`). The jobs and the workers are
    read after it: a worker with the same count may store it and announce itself meanwhile (an
    API and a worker starting together), so before refusing the count is read again, and a
    change restarts the check rather than blaming that worker's layout on the old one."""
    root = keys.root
    redis = clients.for_keys(root)
    stored = int(raw) if raw.isdigit() else None
    if stored == root.partitions or (stored is None and root.partitions == 1):
        return
    count = stored or 1
    before = PartitionClients(redis, root.with_partitions(count))
    held = await jobs_held(before, before.keys)
    workers = await live_workers(redis, root)
    if held or workers:
        now, _ = await stored_partitions(redis, root)
        if now != raw:
            await check_against(clients, keys, now)
            return
        what = f"{held} jobs are" if held else f"{workers} running worker(s) are"
        msg = (
            f"MSGQ_PARTITIONS={root.partitions}, but this deployment's {what} in "
            f"{count} partition(s): set MSGQ_PARTITIONS={count} (the count may change only "
            "while the deployment holds no jobs and no worker runs)"
        )
        raise PartitionCountError(msg)
    swap = redis.register_script(SWAP_COUNT)
    if not await swap(keys=[root.partitions_key], args=[raw, root.partitions]):
        await check_partitions(clients, keys)  # another process stored a count meanwhile
