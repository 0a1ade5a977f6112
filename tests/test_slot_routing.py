"""Slot routing (issue 32, partitions on a cluster): one client made by `connect` sends each
partition's commands, scripts, pipelines and subscriptions to the master serving its slot, on a
real 3-master cluster from the bundled binary; a transaction over two slots is refused before
anything is sent. The pure routing rules are unit-tested beside it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import ResponseError

from msgq.channels import publish, subscriber
from msgq.connections import connect
from msgq.dev.embedded_redis import free_port
from msgq.dev.redis_cluster import RedisCluster
from msgq.keys import Keyspace, keyspace
from msgq.script_calls import run_each
from msgq.slot_routing import Router, SlotRouting, _Sender
from tests.conftest import flush

SIXTEEN = keyspace(clustered=True, partitions=16)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    with RedisCluster(tmp_path_factory.mktemp("routing")) as c:
        yield c


@pytest.fixture
async def routed(cluster: RedisCluster) -> AsyncIterator[Redis]:
    flush(cluster.url)
    client = connect(cluster.url, keys=SIXTEEN, decode_responses=True)
    yield client
    await client.aclose()


async def test_each_partitions_keys_land_on_the_master_serving_its_slot(
    cluster: RedisCluster, routed: Redis
) -> None:
    """16 partitions over 3 masters: every master holds some (before routing, a partition's
    key would have been answered MOVED by the deployment's master)."""
    for part in SIXTEEN.parts:
        await routed.set(part.prefix + "probe", part.partition)
        assert await routed.get(part.prefix + "probe") == str(part.partition)
    await routed.set(SIXTEEN.prefix + "own", 1)
    per_master = cluster.keys_per_master()
    assert sum(per_master.values()) == 17
    assert all(count >= 2 for count in per_master.values()), per_master
    assert isinstance(routed, SlotRouting)
    assert len(routed.router.clients) == 16  # one pinned client a partition's slot


async def test_a_plain_pipeline_over_every_partition_is_split_and_answers_in_order(
    routed: Redis,
) -> None:
    async with routed.pipeline(transaction=False) as pipe:
        for part in SIXTEEN.parts:
            pipe.set(part.prefix + "n", part.partition)
            pipe.incrby(part.prefix + "n", 100)
            pipe.set(SIXTEEN.prefix + "own", part.partition)  # the deployment's own slot
        replies = await pipe.execute()
    expected = []
    for part in SIXTEEN.parts:
        expected += [True, part.partition + 100, True]
    assert replies == expected


async def test_a_transaction_over_two_slots_is_refused_before_anything_is_sent(
    cluster: RedisCluster, routed: Redis
) -> None:
    first, second = SIXTEEN.part(0), SIXTEEN.part(1)
    assert key_slot(first.prefix.encode()) != key_slot(second.prefix.encode())
    pipe = routed.pipeline(transaction=True)
    pipe.set(first.prefix + "a", 1)
    pipe.set(second.prefix + "b", 1)
    with pytest.raises(ResponseError, match="CROSSSLOT"):
        await pipe.execute()
    assert sum(cluster.keys_per_master().values()) == 0
    # One slot's transaction runs, on that slot's master.
    async with routed.pipeline(transaction=True) as pipe:
        pipe.set(second.prefix + "a", 1).incr(second.prefix + "a")
        assert await pipe.execute() == [True, 2]


async def test_a_watched_transaction_runs_on_its_partitions_master(
    cluster: RedisCluster, routed: Redis
) -> None:
    part = SIXTEEN.part(5)
    key = part.prefix + "counter"
    await routed.set(key, 41)
    async with routed.pipeline(transaction=True) as pipe:
        await pipe.watch(key)
        value = int(await pipe.get(key))
        pipe.multi()
        pipe.set(key, value + 1)
        assert await pipe.execute() == [True]
    assert await routed.get(key) == "42"
    assert sum(cluster.keys_per_master().values()) == 1


async def test_a_script_runs_on_every_partitions_master_loaded_once_or_not(
    routed: Redis,
) -> None:
    """`SCRIPT LOAD` reaches every master the client knows; a master first met after the load
    answers NOSCRIPT once and gets the script then (redis-py's Script reloads through us)."""
    script = routed.register_script("redis.call('SET', KEYS[1], ARGV[1]) return ARGV[1]")
    await routed.script_load(script.script)
    for part in SIXTEEN.parts:
        assert await script(keys=[part.prefix + "s"], args=[part.partition]) == str(part.partition)
    async with routed.pipeline(transaction=False) as pipe:
        for part in SIXTEEN.parts:
            await script(keys=[part.prefix + "p"], args=[part.partition], client=pipe)
        assert await pipe.execute() == [str(p.partition) for p in SIXTEEN.parts]
    for part in SIXTEEN.parts:
        assert await routed.get(part.prefix + "p") == str(part.partition)


async def test_a_partitions_sharded_channel_is_heard_on_its_master(routed: Redis) -> None:
    part = SIXTEEN.part(11)
    channel = part.prefix + "done"
    async with subscriber(routed, part) as pubsub:
        await pubsub.subscribe(channel)
        heard = await pubsub.get_message(timeout=5)
        assert heard is not None and heard["type"] == "subscribe"
        await publish(routed, part, channel, "ended")
        message = None
        for _ in range(50):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message is not None:
                break
        assert message is not None and message["data"] == "ended"


def unit_router(tag: str = "msgq") -> tuple[Router, dict[str, object]]:
    made: dict[str, object] = {}

    def connect_prefix(prefix: str) -> Redis:
        made[prefix] = client = object.__new__(Redis)
        return client

    return Router(tag, connect_prefix), made


@pytest.mark.parametrize(
    ("args", "routed_to"),
    [
        (("GET", "{msgq/3}:job:x"), "{msgq/3}:"),
        (("GET", "{msgq}:models"), None),
        (("EVALSHA", "ab12", 2, "{msgq/7}:a", "{msgq}:b", "{msgq/1}:argv"), "{msgq/7}:"),
        (("EVALSHA", "ab12", 1, "{msgq}:b", "{msgq/1}:argv"), None),  # ARGV is not a key
        (("SCAN", 0, "MATCH", "{msgq/2}:*", "COUNT", 100), "{msgq/2}:"),
        (("SET", "{msgq}:x", '{"a": "{msgq/4}"}'), None),  # the first key decides
        (("PUBLISH", '{"json": 1}', "x"), None),  # not the deployment's tag
        (("GET", "{msgq@team/3}:job:x"), None),  # another deployment's partition
        (("PING",), None),
    ],
)
def test_a_command_is_routed_by_its_first_key_of_the_deployment(
    args: tuple[object, ...], routed_to: str | None
) -> None:
    router, made = unit_router()
    target = router.route(args)
    if routed_to is None:
        assert target is None and not made
    else:
        assert list(made) == [routed_to] and target is made[routed_to]


def test_a_partitions_commands_share_one_client() -> None:
    router, made = unit_router()
    first = router.route(("GET", "{msgq/3}:a"))
    assert router.route(("GET", b"{msgq/3}:b")) is first and len(made) == 1


def test_the_deployment_keyspaces_tags_are_what_the_router_reads() -> None:
    """The router's pattern and the keyspace agree: each partition routed, the root not."""
    router, made = unit_router()
    for part in SIXTEEN.parts:
        assert router.route(("GET", part.prefix + "x")) is not None
    assert router.route(("GET", SIXTEEN.root.prefix + "pause")) is None
    assert len(made) == 16
    one_node: Keyspace = keyspace(partitions=4)
    assert router.route(("GET", one_node.part(2).prefix + "x")) is None  # no tag on one node


async def test_an_mget_over_several_partitions_is_split_and_answers_in_order(
    routed: Redis,
) -> None:
    """A listing reads records of every partition in one MGET: one MGET a slot, in order."""
    keys = [part.prefix + f"r{n}" for n in range(3) for part in SIXTEEN.parts]
    for key in keys[::2]:
        await routed.set(key, key)
    expected = [k if n % 2 == 0 else None for n, k in enumerate(keys)]
    keys.append(SIXTEEN.prefix + "missing")  # the deployment's own slot
    assert await routed.mget(keys) == [*expected, None]


def test_the_tenants_spend_is_routed_to_its_spend_tags_slots() -> None:
    """On a cluster the tenants' spend is under 16 spend tags (`msgq.spend_keys`): routed
    there, a client a tag however many tenants; another deployment's tags are not routed."""
    router, made = unit_router()
    acme = router.route(("INCRBY", SIXTEEN.spend_key("acme", "d20261207"), 1))
    assert acme is not None
    assert router.route(("GET", SIXTEEN.spend_applied_key("acme", "n1"))) is acme
    for n in range(500):
        assert router.route(("GET", SIXTEEN.spend_key(f"tenant-{n}", "m202612"))) is not None
    assert len(made) == 16
    team = keyspace("team", clustered=True)
    assert router.route(("GET", team.spend_key("acme", "m202612"))) is None
    assert router.route(("SADD", SIXTEEN.spend_tenants, "acme")) is None  # the deployment's


async def test_budget_steps_run_on_each_tenants_master(
    cluster: RedisCluster, routed: Redis
) -> None:
    """Reserve, record and read a tenant's spend through the one client: each on the master
    serving the tenant's slot, spread over the masters."""
    from msgq.tenancy.budgets import Budgets
    from msgq.tenancy.tenants import TenantConfig

    client = connect(cluster.url, keys=SIXTEEN)  # msgq's own client: replies as bytes
    budgets = Budgets(client, SIXTEEN)
    tenants = [f"tenant-{n}" for n in range(12)]
    for tenant in tenants:
        assert not isinstance(await budgets.reserve(tenant, TenantConfig(), 0.5), str)
        await budgets.record(tenant, 0.25, "claude-haiku-4-5")
    for tenant in tenants:
        assert (await budgets.usage(tenant, TenantConfig()))["spent_today_usd"] == 0.75
    await client.aclose()
    per_master = cluster.keys_per_master()
    assert sum(1 for count in per_master.values() if count) == 3, per_master


def test_a_namespaced_deployment_routes_its_own_partitions() -> None:
    team = keyspace("team", clustered=True, partitions=4)
    router, made = unit_router(team.prefix.removeprefix("{").removesuffix("}:"))
    assert router.route(("GET", team.part(3).prefix + "x")) is not None
    assert router.route(("GET", SIXTEEN.part(3).prefix + "x")) is None  # the default's
    assert list(made) == [team.part(3).prefix]


async def test_after_noscript_only_the_refused_calls_are_sent_again(
    cluster: RedisCluster, routed: Redis
) -> None:
    """One master forgets its scripts (a restart): a step over every partition sends again only
    the calls that shard refused. The others ran already: sent twice, a ticket consumed by a
    worker would be written again, an abort request taken twice."""
    script = routed.register_script("return redis.call('INCR', KEYS[1])")
    calls = [([part.prefix + "n"], []) for part in SIXTEEN.parts]
    assert await run_each(routed, script, calls) == [1] * 16  # NOSCRIPT everywhere at first
    with SyncRedis(port=cluster.master_ports[1]) as node:
        node.script_flush()
    assert await run_each(routed, script, calls) == [2] * 16  # each ran once more, not twice


async def test_a_split_pipeline_costs_one_round_trip_a_master(
    routed: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """16 partitions and the deployment's slot on 3 masters: once each slot's master is known,
    a pipeline over all of them is sent as 3 pipelines, one a master, not 17."""
    sent: list[object] = []
    real_run = _Sender.run

    async def counted(self: _Sender, pool: object, positions: list[int]) -> list[object]:
        sent.append(pool)
        return await real_run(self, pool, positions)  # type: ignore[arg-type]  # a pool

    monkeypatch.setattr(_Sender, "run", counted)

    async def every_slot() -> list[object]:
        async with routed.pipeline(transaction=False) as pipe:
            for part in SIXTEEN.parts:
                pipe.incr(part.prefix + "n")
            pipe.incr(SIXTEEN.prefix + "n")
            return await pipe.execute()

    await every_slot()  # the first meets each slot's master: one pipeline a slot
    sent.clear()
    assert await every_slot() == [2] * 17  # in order, each ran once
    assert len(sent) == 3
    assert isinstance(routed, SlotRouting)
    assert len(routed.router.masters) == 3


async def test_a_slot_moved_off_a_shared_master_is_sent_again_to_its_new_one(
    cluster: RedisCluster, routed: Redis
) -> None:
    """A partition's slot handed to another master (a resharding): the pipeline sent to its
    old master with its neighbours is answered MOVED for it, and that slot's commands go again
    through its own client, which finds the new master. Nothing runs twice."""

    async def every_partition() -> list[object]:
        async with routed.pipeline(transaction=False) as pipe:
            for part in SIXTEEN.parts:
                pipe.get(part.prefix + "n")
            return await pipe.execute()

    await every_partition()  # each slot's master known, the masters' clients made
    part = SIXTEEN.part(0)
    slot = int(key_slot(part.prefix.encode()))
    old = cluster.owner(slot)
    new = next(port for port in cluster.master_ports if port != old)
    cluster.move_slot(slot, to=new)
    async with routed.pipeline(transaction=False) as pipe:
        for each in SIXTEEN.parts:
            pipe.incr(each.prefix + "n")
        assert await pipe.execute() == [1] * 16
    with SyncRedis(port=new) as node:
        assert node.get(part.prefix + "n") == b"1"
    with SyncRedis(port=old) as node:
        assert node.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0


async def test_a_lost_connection_to_a_shared_master_sends_each_slot_again_once(
    routed: Redis,
) -> None:
    """The plain connection to a master is lost (here: every master's address answers nothing
    at all): each slot's commands go again through the slot's own client, in order, once."""

    async def every_slot(verb: str) -> list[object]:
        async with routed.pipeline(transaction=False) as pipe:
            for part in SIXTEEN.parts:
                pipe.execute_command(verb, part.prefix + "lost")
            return await pipe.execute()

    await every_slot("GET")  # each slot's master known
    await every_slot("GET")  # ...and the masters' clients made
    assert isinstance(routed, SlotRouting)
    router = routed.router
    assert len(router.masters) == 3
    for address in list(router.masters):
        await router.masters[address].aclose()
        router.masters[address] = Redis(port=free_port(), socket_connect_timeout=1)
    assert await every_slot("INCR") == [1] * 16
    assert await every_slot("GET") == ["1"] * 16
