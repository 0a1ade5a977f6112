"""The settings that say where a deployment's state is: the Redis URL and its pool, the
namespace and the partitions (`Settings` inherits them; pydantic-settings, env first)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from msgq.cluster import CLUSTER_SCHEMES, is_cluster_url, parse_cluster_url
from msgq.connections import SENTINEL_SCHEMES, is_sentinel, parse_sentinel_url
from msgq.keys import MAX_PARTITIONS, Keyspace, keyspace
from msgq.namespaces import (
    DEFAULT_NAMESPACE,
    DEFAULT_QUEUE_NAME,
    check_namespace,
    resolve_namespace,
)

REDIS_SCHEMES = ("redis://", "rediss://", "unix://", *SENTINEL_SCHEMES, *CLUSTER_SCHEMES)


class RedisSettings(BaseSettings):
    """Where the deployment's state lives, and how its keys are named."""

    model_config = SettingsConfigDict(env_prefix="MSGQ_", env_file=".env", extra="ignore")

    redis_url: str = Field(
        default="redis://localhost:6379/0",
        validation_alias=AliasChoices("MSGQ_REDIS_URL", "REDIS_URL"),
        description="Redis DSN: redis://, rediss://, unix://, redis+sentinel://, redis+cluster://",
    )
    redis_failover_wait_s: float = Field(
        default=30.0,
        gt=0,
        description="redis+sentinel://: how long a command retries across a failover, then fails",
    )
    redis_max_connections: int = Field(
        default=8,
        ge=2,
        description="Redis connections one process may hold (a pub/sub subscription holds one); "
        "past it a command waits for a free one, up to MSGQ_REDIS_POOL_TIMEOUT_S",
    )
    redis_pool_timeout_s: float = Field(
        default=20.0,
        gt=0,
        description="longest wait for a free Redis connection; then the command fails",
    )
    submit_min_replicas: int = Field(
        default=0, ge=0, description="replicas that must hold a submitted job (and its claim)"
    )
    submit_replica_timeout_ms: int = Field(
        default=1000, ge=1, description="longest wait for those replicas; then submit raises"
    )

    @field_validator("redis_url")
    @classmethod
    def _known_redis_scheme(cls, value: str) -> str:
        # Caught here, a typo is one line at start-up instead of a connection error much later.
        if not value.startswith(REDIS_SCHEMES):
            msg = "must start with " + ", ".join(REDIS_SCHEMES)
            raise ValueError(msg)
        if is_sentinel(value):
            parse_sentinel_url(value)  # a ValueError naming what is wrong
        if is_cluster_url(value):
            parse_cluster_url(value)
        return value

    namespace: str = Field(
        default=DEFAULT_NAMESPACE,
        description="the deployment's keyspace on a shared Redis: workers, producers and the "
        "API of one deployment share it; another namespace sees none of its jobs, tenants, "
        "limits or budgets (`msgq` keeps msgq's original key names)",
    )
    queue_name: str = Field(
        default=DEFAULT_QUEUE_NAME,
        description="MSGQ_NAMESPACE's older name: `msgq:N` (or `N`) is namespace N",
    )

    partitions: int = Field(
        default=1,
        ge=1,
        le=MAX_PARTITIONS,
        description="the partitions a deployment's jobs are spread over, by a hash of the job "
        "ID: each keeps its jobs' keys, its arq queue and its copy of the job indexes. Every "
        "process of a deployment must agree; kept in Redis, and a start with another count is "
        "refused while the deployment holds jobs. On a Redis Cluster each partition is a slot "
        "of its own, spread over the masters (e.g. 64 for up to a dozen masters)",
    )

    @field_validator("namespace")
    @classmethod
    def _namespace_name(cls, value: str) -> str:
        return check_namespace(value)

    @field_validator("queue_name")
    @classmethod
    def _one_namespace(cls, value: str, info: ValidationInfo) -> str:
        # Both given and disagreeing: a worker and its producers could end up apart, silently.
        resolve_namespace(info.data.get("namespace", DEFAULT_NAMESPACE), value)
        return value

    @property
    def keys(self) -> Keyspace:
        """This deployment's key names (`MSGQ_NAMESPACE`, or the older `MSGQ_QUEUE_NAME`)."""
        namespace = resolve_namespace(self.namespace, self.queue_name)
        clustered = is_cluster_url(self.redis_url)
        return keyspace(namespace, clustered=clustered, partitions=self.partitions)
