"""Every Redis key name msgq reads or writes, in one place: `Keyspace`, one per deployment.

Deployments sharing a Redis database are separated by their namespace (`MSGQ_NAMESPACE`): every
key that holds a deployment's work (queue, records, indexes, buckets, budgets, scheduler, lane,
fleet policy, workers, webhooks, pub/sub channels, and the queue library's per-job keys) is
built here from it, so nothing of one deployment is visible to another.

- The default namespace, `msgq`, keeps the names msgq always used (`msgq:...`, arq's
  `arq:job:<id>`, `arq:in-progress:<id>`, `arq:retry:<id>`, `arq:abort`, the queue
  `msgq:queue`): existing deployments keep their data, no migration.
- Any other namespace N puts everything under `msgq@N:`: msgq's keys as `msgq@N:<name>`, arq's
  as `msgq@N:arq:<name>`, the queue as `msgq@N:queue`. A namespace holds no `:` (checked), and no
  default key starts with `msgq@`, so no two namespaces can name the same key, whatever the
  job IDs, tenants or model names inside the keys.

The queue's own key names (payloads, locks, try counters, abort set, health check) come from
`msgq.arq_format`, so a different queue library changes them in that one module. Lua scripts
take every key or prefix from KEYS/ARGV, built here. A key built anywhere else is a bug: a
hard-coded name would silently be shared by every deployment.
"""

from __future__ import annotations

import functools
import hashlib
import zlib
from dataclasses import dataclass

import orjson

from msgq import arq_format
from msgq.batch_keys import BatchKeys
from msgq.namespaces import DEFAULT_NAMESPACE, check_namespace
from msgq.spend_keys import SpendKeys

MAX_PARTITIONS = 4096  # a setting above it would be a typo; 16,384 slots in a cluster
SPEND_TAGS = 16  # the tenants' spend on a cluster: over this many slots (`tenant_prefix`)
RELAY_FAILED = "msgq_failed"  # a relayed attempt failed after its first event (never an API event)
RELAY_REQUEST_ID = "msgq_request_id"  # a relayed attempt's API request ID, before its events


@functools.lru_cache(maxsize=4096)
def keyspace(
    namespace: str = DEFAULT_NAMESPACE,
    *,
    clustered: bool = False,
    partitions: int = 1,
    partition: int | None = None,
) -> Keyspace:
    """The keyspace of a namespace, or of one of its partitions (one value each, shared)."""
    return Keyspace(namespace, clustered=clustered, partitions=partitions, partition=partition)


BATCH_ID_MARK = ":msgbatch_"


def partition_key(job_id: str) -> str:
    """What a job's partition is hashed from: its ID, except for a Batches API job
    (`<tenant>:msgbatch_<id>:<custom_id>`) and the batch itself (`msgbatch_<id>`), which hash
    the batch's ID, so a batch, its counts and all its jobs share one partition: creating a
    batch and counting its endings stay single atomic steps on a Redis Cluster."""
    if job_id.startswith("msgbatch_"):
        return job_id.partition(":")[0]
    _, mark, rest = job_id.partition(BATCH_ID_MARK)
    return "msgbatch_" + rest.partition(":")[0] if mark else job_id


@dataclass(frozen=True)
class Keyspace(BatchKeys, SpendKeys):
    """One deployment's key names, from its namespace (`Settings.keys`), for everything that
    reads or writes Redis: one property or method per key, built from `prefix` or `arq_prefix`.

    A deployment is split into `partitions` (`MSGQ_PARTITIONS`, see `msgq.partitions`): the
    deployment's own keyspace (`partition` None) names what is fleet-wide, and `part(p)` names
    partition p's, a keyspace of its own with its own hash tag, so on a cluster the partitions
    spread over the shards. A job's partition is a hash of its ID (`for_job`). With one
    partition, `part(0)` is the deployment's keyspace itself: the names stay as they were."""

    namespace: str = DEFAULT_NAMESPACE
    clustered: bool = False  # on a Redis Cluster (`redis+cluster://`): keys carry hash tags
    partitions: int = 1  # how many partitions the deployment's jobs are spread over
    partition: int | None = None  # None: the deployment's own (fleet-wide) keys; else one part

    def __post_init__(self) -> None:
        check_namespace(self.namespace)
        if not 1 <= self.partitions <= MAX_PARTITIONS:
            msg = f"partitions must be 1-{MAX_PARTITIONS}, not {self.partitions}"
            raise ValueError(msg)
        if self.partition is not None and not 0 <= self.partition < self.partitions:
            msg = f"partition {self.partition} is not one of 0-{self.partitions - 1}"
            raise ValueError(msg)

    @property
    def is_default(self) -> bool:
        return self.namespace == DEFAULT_NAMESPACE

    # ------------------------------------------------------------ partitions

    @property
    def root(self) -> Keyspace:
        """The deployment's own keyspace: what is fleet-wide (limits, pause, policy, workers)."""
        return self if self.partition is None else self.with_partitions(self.partitions)

    def with_partitions(self, partitions: int) -> Keyspace:
        """The deployment's own keyspace in a layout of `partitions` partitions."""
        return keyspace(self.namespace, clustered=self.clustered, partitions=partitions)

    def part(self, partition: int) -> Keyspace:
        """Partition `partition`'s keyspace (the deployment's own when there is one partition)."""
        if self.partitions == 1 and partition == 0:
            return self.root
        return keyspace(
            self.namespace,
            clustered=self.clustered,
            partitions=self.partitions,
            partition=partition,
        )

    @property
    def parts(self) -> tuple[Keyspace, ...]:
        """Every partition's keyspace, in order (listings gather from each)."""
        return tuple(self.part(p) for p in range(self.partitions))

    def partition_of(self, job_id: str) -> int:
        """The partition holding a job: CRC-32 of its ID (`partition_key`) modulo the count,
        the same in every process and language (a raw producer can compute it), and even over
        random IDs."""
        if self.partitions == 1:
            return 0
        return zlib.crc32(partition_key(job_id).encode()) % self.partitions

    def for_job(self, job_id: str) -> Keyspace:
        """The keyspace of the partition holding `job_id`."""
        return self.part(self.partition_of(job_id))

    def _of(self, job_id: str) -> Keyspace:
        """The keyspace holding a job's own keys (record, payload, lock, ledger, channels):
        its partition's, whichever keyspace of the deployment is asked. A partition asked for
        the pattern `*` names its own (a SCAN of that partition: `msgq.audit`)."""
        if self.partitions == 1 or (job_id == "*" and self.partition is not None):
            return self
        return self.root.part(self.partition_of(job_id))

    @property
    def partitions_key(self) -> str:
        """The partition count the deployment's jobs were written with (`msgq.partitions`)."""
        return self.root.prefix + "partitions"

    # ------------------------------------------------------------ names

    @property
    def hash_tag(self) -> str:
        """The hash tag a cluster slots this keyspace's keys by: one slot for the deployment's
        own keys, one for each partition's. `/` is never in a namespace, so a partition's tag
        (`msgq/3`, `msgq@N/3`) is never another namespace's."""
        root = "msgq" if self.is_default else f"msgq@{self.namespace}"
        return root if self.partition is None else f"{root}/{self.partition}"

    @property
    def prefix(self) -> str:
        """Every msgq key of this keyspace starts with it: `msgq:` or `msgq@<namespace>:` on
        one node, `{msgq}:` or `{msgq@<namespace>}:` on a cluster (a hash tag, so one slot);
        a partition's is its tag's (`msgq/3:`, `{msgq/3}:`)."""
        if self.clustered:
            return "{" + self.hash_tag + "}:"
        return self.hash_tag + ":"

    def tenant_prefix(self, tenant: str) -> str:
        """Where a tenant's spend is (`msgq.spend_keys`): the deployment's prefix on one node;
        on a cluster one of `SPEND_TAGS` tags chosen by CRC-32 of the tenant (`{msgq/t3}:`), so
        the tenants' budget steps spread over the shards while a process talks to at most 16
        more slots (a pool each), however many tenants there are."""
        root = self.root
        if not self.clustered:
            return root.prefix
        return "{" + f"{root.hash_tag}/t{zlib.crc32(tenant.encode()) % SPEND_TAGS}" + "}:"

    @property
    def publish_command(self) -> str:
        """PUBLISH on one node, SPUBLISH on a cluster (why: `msgq.channels`)."""
        return "SPUBLISH" if self.clustered else "PUBLISH"

    @property
    def arq_prefix(self) -> str:
        """Before the queue library's names (`arq:job:...`): none for the default one node."""
        root_default = self.is_default and self.partition is None
        return "" if root_default and not self.clustered else self.prefix

    # ------------------------------------------------------------ the queue (arq's formats)

    @property
    def queue(self) -> str:
        """arq's queue: ZSET job id -> run-at ms (`msgq:queue` in the default namespace)."""
        return self.prefix + "queue"

    @property
    def job_key_prefix(self) -> str:
        return self.arq_prefix + arq_format.JOB_KEY_PREFIX

    @property
    def in_progress_key_prefix(self) -> str:
        return self.arq_prefix + arq_format.IN_PROGRESS_KEY_PREFIX

    @property
    def retry_key_prefix(self) -> str:
        return self.arq_prefix + arq_format.RETRY_KEY_PREFIX

    def arq_job_key(self, job_id: str) -> str:
        """The queued job's payload (the queue library's key)."""
        return self._of(job_id).job_key_prefix + job_id

    def in_progress_key(self, job_id: str) -> str:
        """The lock a worker holds while it runs the job (the queue library's key)."""
        return self._of(job_id).in_progress_key_prefix + job_id

    def retry_key(self, job_id: str) -> str:  # the job's try counter (the queue library's key)
        return self._of(job_id).retry_key_prefix + job_id

    @property
    def abort_key(self) -> str:  # ZSET of job IDs whose running attempt should be aborted
        return self.arq_prefix + arq_format.ABORT_KEY

    @property
    def health_check_key(self) -> str:  # written by every live worker at its health-check interval
        return self.queue + arq_format.HEALTH_CHECK_SUFFIX

    # ------------------------------------------------------------ records and indexes

    def record_key(self, job_id: str) -> str:
        return f"{self._of(job_id).prefix}job:{job_id}"

    def spec_key(self, job_id: str) -> str:
        """A failed job's spec, kept so `msgq retry` can re-run it."""
        return f"{self._of(job_id).prefix}spec:{job_id}"

    @property
    def index_key(self) -> str:  # ZSET id -> created ms, for listing
        return self.prefix + "jobs"

    @property
    def active_key(self) -> str:  # ZSET id -> created ms of every job not yet terminal
        return self.prefix + "active"

    @property
    def expiring_key(self) -> str:
        """ZSET JSON [id, tenant, model, status] -> ms when that terminal record's TTL ends: what
        the reconciler takes out of the job indexes then (msgq.jobs.indexes.prune_expired)."""
        return self.prefix + "expiring"

    def status_jobs_key(self, status: str) -> str:
        """ZSET id -> created ms of the jobs in one status (msgq.jobs.indexes keeps it)."""
        return f"{self.prefix}status:{status}:jobs"

    def model_jobs_key(self, model: str) -> str:
        """ZSET id -> created ms of the jobs asking for one model (msgq.jobs.indexes keeps it)."""
        return f"{self.prefix}model:{model}:jobs"

    def tenant_jobs_key(self, tenant: str) -> str:
        return f"{self.prefix}tenant:{tenant}:jobs"

    @property
    def done_channel(self) -> str:  # pub/sub: a job ID each time a record turns terminal
        return self.prefix + "done"

    @property
    def replication_probe(self) -> str:  # a short-lived key: a write for WAIT to count from
        return self.prefix + "replicated"

    def progress_channel(self, job_id: str) -> str:
        """Pub/sub: a running job's text as it streams, for live watchers (nothing is stored)."""
        return f"{self._of(job_id).prefix}progress:{job_id}"

    def relay_channel(self, job_id: str) -> str:
        """Pub/sub: a drop-in stream's events as the worker receives them from the API (see
        worker.job.progress.Relay); only published while the API process asking for them listens."""
        return f"{self._of(job_id).prefix}relay:{job_id}"

    def minute_key(self, kind: str, minute: int, tenant: str | None = None) -> str:
        """Per-minute counter (succeeded, failed, 429, ...), fleet-wide or one tenant's; 2 h TTL."""
        scope = f"tenant:{tenant}:" if tenant else ""
        return f"{self.prefix}minute:{scope}{kind}:{minute}"

    def ui_session_key(self, session_hash: str) -> str:
        """A dashboard session (JSON: role, tenant, CSRF token), under the SHA-256 of its cookie."""
        return f"{self.prefix}ui:session:{session_hash}"

    # ------------------------------------------------------------ the fleet

    @property
    def pause_key(self) -> str:  # the fleet's spend-limit pause (value: the reason)
        return self.prefix + "paused"

    @property
    def reconciler_lock(self) -> str:  # one fleet-wide reconciler at a time
        return self.prefix + "reconciler:lock"

    @property
    def dispatcher_lock(self) -> str:  # one dispatcher fleet-wide
        return self.prefix + "dispatcher:lock"

    @property
    def fleet_workers(self) -> str:  # HASH worker id -> JSON slots and last-seen ms
        return self.prefix + "fleet:workers"

    @property
    def fleet_policy(self) -> str:  # JSON: the fleet's scheduler switch and tenants
        return self.prefix + "fleet:policy"

    @property
    def models_key(self) -> str:  # JSON: GET /v1/models as a worker last read it (all pages)
        return self.prefix + "models"

    @property
    def webhooks_key(self) -> str:  # HASH webhook outbox: "job:<id>"/"batch:<id>" -> JSON
        return self.prefix + "webhooks"

    @property
    def webhooks_due_key(self) -> str:  # ZSET outbox entry -> ms when due (or its lease ends)
        return self.prefix + "webhooks:due"

    # ------------------------------------------------------------ the fair-share scheduler

    @property
    def sched_backlog(self) -> str:  # SET of scheduler queue keys that may hold jobs
        return self.prefix + "sched:backlog"

    @property
    def sched_where(self) -> str:  # HASH job id -> the scheduler queue key holding it
        return self.prefix + "sched:where"

    @property
    def sched_est(self) -> str:  # HASH job id -> JSON admission estimate
        return self.prefix + "sched:est"

    @property
    def sched_inbox(self) -> str:  # ZSET: raw producers' jobs for the dispatcher
        return self.prefix + "sched:inbox"

    @property
    def sched_wake(self) -> str:  # pub/sub: a job was scheduled
        return self.prefix + "sched:wake"

    @property
    def sched_woken(self) -> str:  # set while a wake is owed the dispatcher (wake_dispatcher)
        return self.prefix + "sched:woken"

    @property
    def queue_wake(self) -> str:  # pub/sub: the dispatcher made jobs ready in arq's queue
        return self.prefix + "queue:wake"

    @property
    def webhooks_wake(self) -> str:  # pub/sub: a job's webhook is owed (msgq.webhooks.outbox)
        return self.prefix + "webhooks:wake"

    @property
    def sched_deadlines(self) -> str:  # ZSET job id -> deadline ms, while it waits
        return self.prefix + "sched:deadlines"

    @property
    def tickets_key(self) -> str:  # ZSET job id -> ms admitted, while its ticket is held
        return self.prefix + "tickets"

    def sched_queue_key(self, model_cls: str, priority: str, tenant: str | None) -> str:
        """FIFO (ZSET by submission ms) of one tenant's jobs at one priority for one model class.

        Named by a digest of the three, never by the strings themselves: a model name or tenant
        is caller input, and a key that embeds it could be parsed back as another queue. The
        queue's identity travels with each job as data (`msgq.tenancy.scheduling.Waiting`)."""
        digest = hashlib.sha256(orjson.dumps([model_cls, priority, tenant])).hexdigest()[:32]
        return f"{self.prefix}sched:q:{digest}"

    # ------------------------------------------------------------ the reservation ledger

    @property
    def ledger_open(self) -> str:  # ZSET job id -> ms its ledger was opened
        return self.prefix + "ledger:open"

    def ledger_key(self, job_id: str) -> str:
        """HASH of the reservations a job holds while it sends (msgq.ledger), one field each."""
        return f"{self._of(job_id).prefix}ledger:{job_id}"

    def admitted_key(self, job_id: str) -> str:
        """Set by the dispatcher when it admitted the job under the rate limits and budget: the
        worker then sends at once, and settles against this estimate."""
        return f"{self._of(job_id).prefix}admitted:{job_id}"

    # ------------------------------------------------------------ rate limits

    def bucket_key(self, model_cls: str) -> str:
        """The rate-limit buckets (requests, input, output tokens) of one model class."""
        return f"{self.prefix}ratelimit:{model_cls}"

    def cooldown_key(self, model_cls: str) -> str:
        return f"{self.prefix}ratelimit:{model_cls}:cooldown"

    @property
    def cooling_key(self) -> str:
        """Exists while any model class cools down (as long as the longest): the worker's pick-up
        reads it with the job, without knowing its model, to know whether to skip the limiter."""
        return self.prefix + "ratelimit:cooling"
