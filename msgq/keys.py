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
import re
from dataclasses import dataclass

import orjson

from msgq import arq_format

DEFAULT_NAMESPACE = "msgq"
DEFAULT_QUEUE_NAME = "msgq:queue"  # MSGQ_QUEUE_NAME's default: the default namespace's queue
NAMESPACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

RELAY_FAILED = "msgq_failed"  # a relayed attempt failed after its first event (never an API event)
RELAY_REQUEST_ID = "msgq_request_id"  # a relayed attempt's API request ID, before its events


def check_namespace(namespace: str) -> str:
    """The namespace, or ValueError: 1-64 of `A-Za-z0-9_.-` (no `:`: no prefix of another)."""
    if not NAMESPACE_RE.fullmatch(namespace):
        msg = (
            f"namespace {namespace[:80]!r} must be 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
        raise ValueError(msg)
    return namespace


def namespace_of_queue(queue_name: str) -> str:
    """The namespace an older `MSGQ_QUEUE_NAME` means (`msgq:queue`: the default; `msgq:N`: N)."""
    if queue_name == DEFAULT_QUEUE_NAME:
        return DEFAULT_NAMESPACE
    name = queue_name.removeprefix("msgq:")
    try:
        return check_namespace(name)
    except ValueError:
        msg = f"MSGQ_QUEUE_NAME={queue_name[:80]!r} names no namespace; set MSGQ_NAMESPACE instead"
        raise ValueError(msg) from None


@functools.lru_cache(maxsize=64)
def keyspace(namespace: str = DEFAULT_NAMESPACE, *, clustered: bool = False) -> Keyspace:
    """The keyspace of a namespace (one value per namespace and layout, shared)."""
    return Keyspace(namespace, clustered=clustered)


@dataclass(frozen=True)
class Keyspace:
    """One deployment's key names, from its namespace (`Settings.keys`), for everything that
    reads or writes Redis: one property or method per key, built from `prefix` or `arq_prefix`."""

    namespace: str = DEFAULT_NAMESPACE
    clustered: bool = False  # on a Redis Cluster (`redis+cluster://`): every key in one hash tag

    def __post_init__(self) -> None:
        check_namespace(self.namespace)

    @property
    def is_default(self) -> bool:
        return self.namespace == DEFAULT_NAMESPACE

    @property
    def hash_tag(self) -> str:
        """The hash tag a cluster slots all of this deployment's keys by: one slot for all."""
        return "msgq" if self.is_default else f"msgq@{self.namespace}"

    @property
    def prefix(self) -> str:
        """Every msgq key of this deployment starts with it: `msgq:` or `msgq@<namespace>:` on
        one node, `{msgq}:` or `{msgq@<namespace>}:` on a cluster (a hash tag, so one slot)."""
        if self.clustered:
            return "{" + self.hash_tag + "}:"
        return "msgq:" if self.is_default else f"msgq@{self.namespace}:"

    @property
    def publish_command(self) -> str:
        """PUBLISH on one node, SPUBLISH on a cluster (why: `msgq.channels`)."""
        return "SPUBLISH" if self.clustered else "PUBLISH"

    @property
    def arq_prefix(self) -> str:
        """Before the queue library's names (`arq:job:...`): none for the default one node."""
        return "" if self.is_default and not self.clustered else self.prefix

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
        return self.job_key_prefix + job_id

    def in_progress_key(self, job_id: str) -> str:
        """The lock a worker holds while it runs the job (the queue library's key)."""
        return self.in_progress_key_prefix + job_id

    def retry_key(self, job_id: str) -> str:  # the job's try counter (the queue library's key)
        return self.retry_key_prefix + job_id

    @property
    def abort_key(self) -> str:  # ZSET of job IDs whose running attempt should be aborted
        return self.arq_prefix + arq_format.ABORT_KEY

    @property
    def health_check_key(self) -> str:  # written by every live worker at its health-check interval
        return self.queue + arq_format.HEALTH_CHECK_SUFFIX

    # ------------------------------------------------------------ records and indexes

    def record_key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def spec_key(self, job_id: str) -> str:
        """A failed job's spec, kept so `msgq retry` can re-run it."""
        return f"{self.prefix}spec:{job_id}"

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
        return f"{self.prefix}progress:{job_id}"

    def relay_channel(self, job_id: str) -> str:
        """Pub/sub: a drop-in stream's events as the worker receives them from the API (see
        worker.job.progress.Relay); only published while the API process asking for them listens."""
        return f"{self.prefix}relay:{job_id}"

    def minute_key(self, kind: str, minute: int, tenant: str | None = None) -> str:
        """Per-minute counter (succeeded, failed, 429, ...), fleet-wide or one tenant's; 2 h TTL."""
        scope = f"tenant:{tenant}:" if tenant else ""
        return f"{self.prefix}minute:{scope}{kind}:{minute}"

    def ui_session_key(self, session_hash: str) -> str:
        """A dashboard session (JSON: role, tenant, CSRF token), under the SHA-256 of its cookie."""
        return f"{self.prefix}ui:session:{session_hash}"

    # ------------------------------------------------------------ batches (the Batches API)

    @property
    def batches_key(self) -> str:  # ZSET batch id -> expires_at ms, until the batch expires
        return self.prefix + "batches"

    def batch_key(self, batch_id: str) -> str:
        return f"{self.prefix}batch:{batch_id}"

    def batch_ids_key(self, batch_id: str) -> str:
        return f"{self.prefix}batch:{batch_id}:ids"

    def batch_counts_key(self, batch_id: str) -> str:
        return f"{self.prefix}batch:{batch_id}:counts"

    def tenant_batches_key(self, tenant: str) -> str:
        return f"{self.prefix}tenant:{tenant}:batches"

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
    def queue_wake(self) -> str:  # pub/sub: the dispatcher made jobs ready in arq's queue
        return self.prefix + "queue:wake"

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
        return f"{self.prefix}ledger:{job_id}"

    def admitted_key(self, job_id: str) -> str:
        """Set by the dispatcher when it admitted the job under the rate limits and budget: the
        worker then sends at once, and settles against this estimate."""
        return f"{self.prefix}admitted:{job_id}"

    # ------------------------------------------------------------ budgets and rate limits

    @property
    def spend_tenants(self) -> str:  # SET of tenants with spend recorded
        return self.prefix + "spend:tenants"

    def spend_key(self, tenant: str, period: str) -> str:
        """USD reserved + spent by a tenant in a period (`d20261125` or `m202611`)."""
        return f"{self.prefix}spend:{tenant}:{period}"

    def spend_models_key(self, tenant: str, day: str) -> str:
        """HASH model -> USD actually spent that day (for usage reports and the dashboard)."""
        return f"{self.prefix}spend:{tenant}:{day}:models"

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

    # ------------------------------------------------------------ the batch lane

    @property
    def lane_pool(self) -> str:  # ZSET job id -> ms pooled: batch-lane jobs not yet sent
        return self.prefix + "lane:pool"

    @property
    def lane_pool_bytes(self) -> str:  # the pooled specs' total size
        return self.prefix + "lane:pool:bytes"

    @property
    def lane_where(self) -> str:  # HASH job id -> "pool" or the msgq upstream-batch handle
        return self.prefix + "lane:where"

    @property
    def lane_batches(self) -> str:  # ZSET upstream-batch handle -> ms when next due
        return self.prefix + "lane:batches"

    @property
    def lane_adopted(self) -> str:  # ZSET upstream msgbatch id -> created ms (claimed)
        return self.prefix + "lane:adopted"

    @property
    def lane_lock(self) -> str:  # one batch-lane manager (batcher + poller) fleet-wide
        return self.prefix + "lane:lock"

    @property
    def lane_budgets(self) -> str:  # HASH job id -> its budget reservation (JSON)
        return self.prefix + "lane:budgets"

    def lane_spec_key(self, job_id: str) -> str:
        """A batch-lane job's spec while it is pooled or upstream (arq's payload is gone then)."""
        return f"{self.prefix}lane:spec:{job_id}"

    def lane_batch_key(self, handle: str) -> str:
        """One upstream batch as msgq sees it (JSON: state, upstream id, counts, timing)."""
        return f"{self.prefix}lane:ub:{handle}"

    def lane_batch_members_key(self, handle: str) -> str:
        """HASH custom_id -> job id of the requests in one upstream batch."""
        return f"{self.prefix}lane:ub:{handle}:members"

    def lane_batch_order_key(self, handle: str) -> str:
        """LIST of custom_ids in the order they are sent (the create body streams from it)."""
        return f"{self.prefix}lane:ub:{handle}:order"


@functools.lru_cache(maxsize=64)  # `Settings.keys` is read on every job's path
def resolve_namespace(namespace: str, queue_name: str) -> str:
    """The one namespace `MSGQ_NAMESPACE` and the older `MSGQ_QUEUE_NAME` name together; a
    ValueError when both are set to different ones."""
    from_queue = namespace_of_queue(queue_name)
    if namespace == DEFAULT_NAMESPACE:
        return from_queue
    if from_queue not in (DEFAULT_NAMESPACE, namespace):
        msg = f"MSGQ_NAMESPACE={namespace!r} and MSGQ_QUEUE_NAME={queue_name!r} disagree; set one"
        raise ValueError(msg)
    return namespace
