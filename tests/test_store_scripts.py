"""The job store's scripts declare every key they write (msgq.jobs.store_scripts): the commands
a record's write collects go in ARGV by their key's place in KEYS, never by name, and still run
as they were recorded, on a real Redis."""

from __future__ import annotations

from redis.asyncio import Redis

from msgq.jobs.store_scripts import COMPARE_AND_SET, flatten
from msgq.script_calls import declare
from tests.conftest import KEYS

PART = KEYS.part(0).prefix


def test_every_written_key_is_declared_once_and_argv_names_none() -> None:
    record = PART + "job:a"
    commands = [
        ("SET", record, "new"),
        ("ZADD", PART + "by-status", "NX", 5, "a"),
        ("HSET", PART + "h", "f", "v"),
        ("DEL", PART + "x", PART + "y", record),
        ("SPUBLISH", PART + "done", "a"),
    ]
    keys = [record]
    flat = flatten(commands, keys)
    assert keys == [record, PART + "by-status", PART + "h", PART + "x", PART + "y"]
    assert not set(keys) & {word for word in flat if isinstance(word, str)} - {PART + "done"}
    assert flat[0] == 7  # the DEL of three keys is three DELs; the channel's publish stays one
    assert flat[1:4] == [3, "SET", 1]  # SET, the record's place in KEYS, then its value


async def test_the_recorded_commands_run_on_their_declared_keys(redis: Redis) -> None:
    record = PART + "job:s"
    await redis.set(record, "old")
    await redis.set(PART + "x", 1)
    await redis.set(PART + "y", 1)
    commands = [
        ("SET", record, "new"),
        ("ZADD", PART + "by-status", "NX", 5, "s"),
        ("HSET", PART + "h", "f", "v"),
        ("DEL", PART + "x", PART + "y"),
        ("EXPIRE", PART + "h", 60),
        ("SPUBLISH" if KEYS.clustered else "PUBLISH", PART + "done", "s"),
    ]
    keys = [record]
    cas = redis.register_script(COMPARE_AND_SET)
    assert await cas(keys=keys, args=["stale", *flatten(commands, list(keys))]) == 0
    assert await redis.get(record) == b"old"  # nothing written
    args = ["old", *flatten(commands, keys)]
    assert await cas(keys=keys, args=args) == 1
    assert await redis.get(record) == b"new"
    assert await redis.zscore(PART + "by-status", "s") == 5
    assert await redis.hget(PART + "h", "f") == b"v"
    assert 0 < await redis.ttl(PART + "h") <= 60
    assert await redis.exists(PART + "x", PART + "y") == 0


def test_a_key_named_in_data_is_declared_once_by_its_place() -> None:
    """The scheduler's scripts take each job's queue (named in a hash) from KEYS by its place."""
    keys = ["{msgq}:sched:where"]
    places = [
        declare(keys, q) for q in ("{msgq}:sched:q:a", "{msgq}:sched:q:b", "{msgq}:sched:q:a")
    ]
    assert places == [2, 3, 2]
    assert keys == ["{msgq}:sched:where", "{msgq}:sched:q:a", "{msgq}:sched:q:b"]
