"""Group commit (msgq.group_commit): calls made together go in one pipeline, each caller gets
its own reply or error, and a script the server lost is loaded again. Against the real Redis."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from msgq.group_commit import GroupCommit
from tests.conftest import KEYS

INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


async def test_calls_made_together_share_one_round_trip(redis: Redis) -> None:
    group = GroupCommit(redis)
    script = redis.register_script(INCR)
    key = KEYS.prefix + "group:test"
    replies = await asyncio.gather(*(group.call(script, [key], [1]) for _ in range(50)))
    assert sorted(replies) == list(range(1, 51))  # every call ran, once
    assert int(await redis.get(key)) == 50
    assert group.calls == 50
    assert group.batches <= 2  # the first call alone at most, then everything queued behind it


async def test_one_failing_call_fails_only_its_caller(redis: Redis) -> None:
    group = GroupCommit(redis)
    script = redis.register_script(INCR)
    good, bad = KEYS.prefix + "group:good", KEYS.prefix + "group:bad"
    await redis.set(bad, "not a number")
    results = await asyncio.gather(
        group.call(script, [good], [2]),
        group.call(script, [bad], [2]),
        group.call(script, [good], [3]),
        return_exceptions=True,
    )
    assert results[0] == 2 and results[2] == 5
    assert isinstance(results[1], ResponseError)


async def test_a_script_the_server_lost_is_loaded_again(redis: Redis) -> None:
    group = GroupCommit(redis)
    script = redis.register_script(INCR)
    key = KEYS.prefix + "group:flushed"
    assert await group.call(script, [key], [1]) == 1
    await redis.script_flush()  # as a restarted or failed-over Redis has no scripts
    replies = await asyncio.gather(*(group.call(script, [key], [1]) for _ in range(5)))
    assert sorted(replies) == [2, 3, 4, 5, 6]  # each sent once more, none twice


async def test_a_lost_connection_fails_every_caller_of_the_batch(redis_url: str) -> None:
    broken = Redis.from_url(redis_url.rsplit(":", 1)[0] + ":1")  # nothing listens on port 1
    group = GroupCommit(broken)
    script = broken.register_script(INCR)
    results = await asyncio.gather(
        group.call(script, ["k"], [1]), group.call(script, ["k"], [1]), return_exceptions=True
    )
    assert all(isinstance(result, RedisConnectionError) for result in results)
    await broken.aclose()


async def test_a_record_swap_writes_only_over_what_it_expects(redis: Redis) -> None:
    """`JobStore.swap` (a running job's progress): a compare-and-set, here through a group."""
    from msgq.jobs.store import JobStore

    store = JobStore(redis, keys=KEYS, retention_s=60)
    store.group = GroupCommit(redis)
    key = KEYS.record_key("job_swap")
    await redis.set(key, b'{"v":1}')
    assert await store.swap("job_swap", b'{"v":1}', b'{"v":2}')
    assert not await store.swap("job_swap", b'{"v":1}', b'{"v":3}')  # it had moved on
    assert await redis.get(key) == b'{"v":2}'


# ARGV: any number of amounts, one a call; the one reply is the total after them all.
ADD_EACH = """
for _, amount in ipairs(ARGV) do redis.call('INCRBY', KEYS[1], amount) end
return tonumber(redis.call('GET', KEYS[1]))
"""


async def test_merged_calls_on_the_same_keys_go_as_one_script_call(redis: Redis) -> None:
    group = GroupCommit(redis)
    script = redis.register_script(ADD_EACH)
    plain = redis.register_script(INCR)
    one, two = KEYS.prefix + "group:merged:1", KEYS.prefix + "group:merged:2"
    calls = [group.call(script, [one], [1], merge=True) for _ in range(30)]
    calls += [group.call(script, [two], [10], merge=True) for _ in range(30)]
    calls += [group.call(plain, [one], [100]) for _ in range(5)]  # not merged: one call each
    replies = await asyncio.gather(*calls)
    assert int(await redis.get(one)) == 30 + 500 and int(await redis.get(two)) == 300
    assert group.calls == 65
    # A batch sends one call per merged key and one per plain call: at most 2 batches here
    assert group.sent <= 2 * (2 + 5) and group.sent < group.calls
    assert set(replies[30:60]) <= {300, *range(10, 301, 10)}  # each caller: its merged call's


async def test_merged_calls_the_server_lost_are_sent_again_once(redis: Redis) -> None:
    group = GroupCommit(redis)
    script = redis.register_script(ADD_EACH)
    key = KEYS.prefix + "group:merged:flushed"
    await group.call(script, [key], [1], merge=True)
    await redis.script_flush()
    await asyncio.gather(*(group.call(script, [key], [1], merge=True) for _ in range(20)))
    assert int(await redis.get(key)) == 21  # each call's amount once, none twice


async def test_a_failing_merged_call_fails_each_of_its_callers_only(redis: Redis) -> None:
    group = GroupCommit(redis)
    script = redis.register_script(ADD_EACH)
    good, bad = KEYS.prefix + "group:merged:good", KEYS.prefix + "group:merged:bad"
    await redis.set(bad, "not a number")
    results = await asyncio.gather(
        group.call(script, [bad], [1], merge=True),
        group.call(script, [good], [2], merge=True),
        group.call(script, [bad], [1], merge=True),
        return_exceptions=True,
    )
    assert isinstance(results[0], ResponseError) and isinstance(results[2], ResponseError)
    assert results[1] == 2
