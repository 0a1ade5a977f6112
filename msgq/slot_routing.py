"""One cluster client for a partitioned deployment: each command goes to its keys' master.

A deployment split into partitions (`msgq.keys`, `MSGQ_PARTITIONS`) has a hash tag per
partition (`{msgq/7}:...`) beside its own (`{msgq}:...`): on a cluster each is a slot, served
by whichever master holds it. msgq's code names keys through its `Keyspace` and otherwise
talks to one `Redis` client, as on one node. `SlotRouting` keeps it that way: the client made
by `msgq.connections.connect` on a cluster is pinned to the deployment's own slot
(`msgq.cluster.cluster_client`), and this mixin sends a command whose keys carry one of the
deployment's partition tags (or a tenant's: its spend) through a client pinned to that slot
instead (made on first use, with the same failover and slot-move handling).

Why not redis-py's `RedisCluster`: see `msgq.cluster` (no transactions, no pub/sub in 5.x,
which arq pins). What is routed, and how:

- **A command** by its first key: a script's first declared key (`EVALSHA sha n k1 ...`),
  otherwise the first argument carrying one of the deployment's tags (a `SCAN`'s `MATCH`
  pattern included). Keys with no tag of the deployment go where they always went, to its own
  slot, whose master answers `MOVED` for a stray key (a clear error in `msgq.cluster`).
- **A pipeline** as one unit when all its keys are in one slot. A transaction (`MULTI`, or a
  `WATCH` first) must be: one across slots is refused with the cluster's own `CROSSSLOT`
  before anything is sent, since no shard could run it atomically. A plain pipeline over
  several slots is split, one pipeline per slot sent concurrently, and its replies put back in
  the order the commands were queued. A keyless command (`WAIT` after a write) goes with the
  command before it, on that command's connection. Slots served by one master go together, in
  one pipeline on a plain connection to that master (`Router.master`): 16 partitions on 3
  masters cost 3 round trips, not 16. A slot whose commands that master answers `MOVED` (or
  `TRYAGAIN`, `CLUSTERDOWN`), or a send that loses its connection, is sent again through the
  slot's own client, which waits out a failover as any command does.
- **`SCRIPT LOAD`** goes to every master this client talks to, so a script loaded once runs on
  every partition's shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import ConnectionPool
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from msgq.cluster import SLOT_ELSEWHERE

SCRIPT_CALLS = frozenset({"EVALSHA", "EVAL", "EVALSHA_RO", "EVAL_RO", "FCALL", "FCALL_RO"})
CROSSSLOT = "CROSSSLOT Keys in request don't hash to the same slot"


class Router:
    """Which pinned client serves a command: the deployment's own (`None`) or a partition's.

    `tag` is the deployment's hash tag (`msgq`, `msgq@team`): only its partitions' tags
    (`{tag/p}`) and its spend tags (`{tag/t3}`, the tenants' spend: `msgq.spend_keys`) are
    routed, so a client made for one deployment never quietly serves another's keys."""

    def __init__(
        self,
        tag: str,
        connect_prefix: Callable[[str], Redis],
        connect_master: Callable[[Address], Redis] | None = None,
    ) -> None:
        self.partition_tag = re.compile(rb"\{" + re.escape(tag.encode()) + rb"/t?\d+\}")
        self.connect_prefix = connect_prefix
        self.connect_master = connect_master
        self.clients: dict[int, Redis] = {}
        self.masters: dict[Address, Redis] = {}

    def route(self, args: tuple[Any, ...], name: str | None = None) -> Redis | None:
        """The client for this command (`name`: its upper-cased name, when known), or None for
        the deployment's own slot."""
        for arg in _candidate_keys(args, name or _name(args)):
            raw = arg.encode() if isinstance(arg, str) else arg
            if not isinstance(raw, bytes) or raw[:1] != b"{":
                continue
            tag = self.partition_tag.match(raw)
            return None if tag is None else self._client(tag.group(0))
        return None

    def _client(self, tag: bytes) -> Redis:
        slot = int(key_slot(tag))
        client = self.clients.get(slot)
        if client is None:
            client = self.clients[slot] = self.connect_prefix(tag.decode() + ":")
        return client

    def master(self, pool: ConnectionPool) -> Address | None:
        """The master a slot's pool last reached, while it is not known to be lost; None if
        not yet connected (or when masters are not shared: no `connect_master`)."""
        if self.connect_master is None or getattr(pool, "lost_at", True) is not None:
            return None
        reached: Address | None = getattr(pool, "reached", None)
        return reached

    def master_client(self, address: Address) -> Redis:
        assert self.connect_master is not None  # `master` answered only with one
        client = self.masters.get(address)
        if client is None:
            client = self.masters[address] = self.connect_master(address)
        return client

    async def aclose(self) -> None:
        clients, self.clients = list(self.clients.values()), {}
        masters, self.masters = list(self.masters.values()), {}
        for client in [*clients, *masters]:
            await client.aclose()


Address = tuple[str, int]


def _name(args: tuple[Any, ...]) -> str:
    return args[0].upper() if isinstance(args[0], str) else str(args[0]).upper()


def _candidate_keys(args: tuple[Any, ...], name: str) -> tuple[Any, ...]:
    """The arguments that may be keys: a script's declared keys, else all but the name."""
    if name in SCRIPT_CALLS and len(args) > 2:
        return args[3 : 3 + int(args[2])]
    return args[1:]


class SlotRouting(Redis):
    """Mixed in before a `Redis` class (`routed_class`): see the module's docstring."""

    router: Router

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        name = _name(args)
        if _is_script_load(args, name):
            targets = [
                client.execute_command(*args, **options)  # type: ignore[no-untyped-call]  # untyped upstream
                for client in self.router.clients.values()
            ]
            own = await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]  # untyped upstream
            await asyncio.gather(*targets)
            return own
        target = self.router.route(args, name)
        if name == "MGET" and len(args) > 2:
            owners = [self.router.route(("GET", key)) for key in args[1:]]
            if any(owner is not target for owner in owners):
                return await self._mget(args[1:], owners, options)
        if target is None:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]  # untyped upstream
        return await target.execute_command(*args, **options)  # type: ignore[no-untyped-call]  # untyped upstream

    async def _mget(
        self, keys: tuple[Any, ...], targets: list[Redis | None], options: dict[str, Any]
    ) -> list[Any]:
        """MGET over several slots (a listing's records, from every partition): one MGET a
        slot, sent at once, the values put back in the order of `keys`."""
        groups: dict[int, list[int]] = {}
        for index, target in enumerate(targets):
            groups.setdefault(id(target), []).append(index)
        async with self.pipeline(transaction=False) as pipe:
            for positions in groups.values():
                pipe.execute_command("MGET", *(keys[i] for i in positions), **options)
            answers = await pipe.execute()
        values: list[Any] = [None] * len(keys)
        for positions, answer in zip(groups.values(), answers, strict=True):
            for index, value in zip(positions, answer, strict=True):
                values[index] = value
        return values

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        return RoutedPipeline(self, transaction, shard_hint)

    def pool_for(self, prefix: str) -> ConnectionPool:
        """The connection pool serving keys under `prefix` (a subscriber's, say)."""
        target = self.router.route(("GET", prefix))
        return self.connection_pool if target is None else target.connection_pool

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await self.router.aclose()
        await super().aclose(close_connection_pool)


def _is_script_load(args: tuple[Any, ...], name: str) -> bool:
    return (name == "SCRIPT" and len(args) > 1 and str(args[1]).upper() == "LOAD") or (
        name == "SCRIPT LOAD"
    )


def routed_class(redis_class: type[Redis]) -> type[SlotRouting]:
    """`redis_class` (redis-py's, arq's) with slot routing mixed in."""
    if issubclass(redis_class, SlotRouting):
        return redis_class
    return type(f"Routed{redis_class.__name__}", (SlotRouting, redis_class), {})


class RoutedPipeline(Pipeline):
    """A pipeline of a `SlotRouting` client: one slot's commands as one unit, a plain
    pipeline over several slots split per slot (see the module's docstring)."""

    def __init__(self, client: SlotRouting, transaction: bool, shard_hint: Any) -> None:
        super().__init__(client.connection_pool, client.response_callbacks, transaction, shard_hint)
        self.routing = client
        self.own_pool = client.connection_pool
        self.pinned = False  # the pool is chosen (by a WATCH, or by `execute`)

    async def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
        if self.connection is None and not self.pinned:  # a WATCH picks the connection
            self.connection_pool = self._pool(args)
            self.pinned = True
        return await super().immediate_execute_command(*args, **options)  # type: ignore[no-untyped-call]  # untyped upstream

    async def reset(self) -> None:
        await super().reset()  # type: ignore[no-untyped-call]  # untyped upstream
        self.connection_pool = self.own_pool
        self.pinned = False

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        if self.connection is not None or not self.command_stack:
            return await super().execute(raise_on_error)
        groups = self._groups()
        if len(groups) == 1:
            self.connection_pool = next(iter(groups))
            self.pinned = True  # its scripts are loaded on this pool too
            return await super().execute(raise_on_error)
        if self.is_transaction or self.explicit_transaction:
            await self.reset()
            msg = f"{CROSSSLOT} (a transaction over {len(groups)} slots: a msgq bug)"
            raise ResponseError(msg)
        return await self._split(groups, raise_on_error)

    def _pool(self, args: tuple[Any, ...]) -> ConnectionPool:
        target = self.routing.router.route(args)
        return self.own_pool if target is None else target.connection_pool

    def _groups(self) -> dict[ConnectionPool, list[int]]:
        """The commands' positions by the pool serving them; a keyless command goes with the
        command before it (a `WAIT` with the write it waits for)."""
        groups: dict[ConnectionPool, list[int]] = {}
        keyless: list[int] = []
        last: ConnectionPool | None = None
        for index, (args, _options) in enumerate(self.command_stack):
            name = _name(args)
            target = self.routing.router.route(args, name)
            if target is None and name in KEYLESS:
                if last is None:
                    keyless.append(index)
                else:
                    groups[last].append(index)
                continue
            last = self.own_pool if target is None else target.connection_pool
            groups.setdefault(last, []).extend([*keyless, index])
            keyless = []
        if keyless:
            groups.setdefault(last or self.own_pool, []).extend(keyless)
        return groups

    async def _split(
        self, groups: dict[ConnectionPool, list[int]], raise_on_error: bool
    ) -> list[Any]:
        """Each master's slots in one pipeline (one slot's alone on its own client). The
        commands are copied first: a part still resending after another failed must not read a
        stack that `reset` emptied."""
        by_master: dict[object, dict[ConnectionPool, list[int]]] = {}
        for pool, positions in groups.items():
            address = self.routing.router.master(pool)
            by_master.setdefault(address or id(pool), {})[pool] = sorted(positions)
        stack, scripts = list(self.command_stack), set(self.scripts)
        send = _Sender(self.routing.router, stack, scripts, self.response_callbacks)
        try:
            answers = await asyncio.gather(
                *(send.master(key, slots) for key, slots in by_master.items()),
                return_exceptions=True,  # every part ends before the pipeline is reset
            )
        finally:
            await self.reset()
        replies: list[Any] = [None] * len(send.stack)
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
            for index, reply in answer.items():
                replies[index] = reply
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies


class _Sender:
    """Sends a split pipeline's parts: its commands (`stack`, copied), its scripts."""

    def __init__(self, router: Router, stack: list[Any], scripts: set[Any], callbacks: Any) -> None:
        self.router, self.stack, self.scripts = router, stack, scripts
        self.response_callbacks = callbacks

    async def master(self, key: object, slots: dict[ConnectionPool, list[int]]) -> dict[int, Any]:
        """The replies (by position) of one master's slots' commands (`key`: its address, as
        they were grouped; else one slot alone). Sent together on a plain connection to that
        master. A slot's commands it refuses (MOVED, TRYAGAIN, CLUSTERDOWN: nothing ran), with
        the keyless ones after them (a WAIT), or every command when the connection is lost
        (as the slot's own client would retry), go again through each slot's own pool, which
        finds the slot's master."""
        if not isinstance(key, tuple):
            [(pool, positions)] = slots.items()
            return dict(zip(positions, await self.run(pool, positions), strict=True))
        master = self.router.master_client(key).connection_pool
        everything = sorted(i for positions in slots.values() for i in positions)
        replies: dict[int, Any] = {}
        with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError):
            replies = dict(zip(everything, await self.run(master, everything), strict=True))

        async def again(pool: ConnectionPool, positions: list[int]) -> None:
            refused = [i for i in positions if i not in replies or _elsewhere(replies[i])]
            if refused:
                after = [i for i in positions if i > refused[0] and _keyless(self.stack[i])]
                resend = sorted({*refused, *after})
                replies.update(zip(resend, await self.run(pool, resend), strict=True))

        ends = await asyncio.gather(
            *(again(pool, positions) for pool, positions in slots.items()),
            return_exceptions=True,
        )
        for end in ends:
            if isinstance(end, BaseException):
                raise end
        return replies

    async def run(self, pool: ConnectionPool, positions: list[int]) -> list[Any]:
        part = Pipeline(pool, self.response_callbacks, False, None)
        part.command_stack = [self.stack[i] for i in positions]
        part.scripts = set(self.scripts)
        return await part.execute(raise_on_error=False)


def _keyless(command: tuple[tuple[Any, ...], dict[str, Any]]) -> bool:
    return _name(command[0]) in KEYLESS


def _elsewhere(reply: Any) -> bool:
    """A reply saying the slot is not (or not now) served by the node asked: nothing ran."""
    return isinstance(reply, ResponseError) and str(reply).startswith(SLOT_ELSEWHERE)


# Commands naming no key (WAIT, PING): in a pipeline each follows its neighbour.
KEYLESS = frozenset({"WAIT", "WAITAOF", "PING", "INFO", "TIME", "ECHO", "DBSIZE"})
