"""Every Redis key name msgq reads or writes, in one place.

msgq's own keys live under `msgq:`; the queue's keys (the job payloads, in-progress locks,
abort requests, health check) are named by the queue library, and `msgq.arq_format` says
what they are, so a different queue library changes those names in that one module.
"""

from __future__ import annotations

import hashlib

import orjson

from msgq import arq_format

KEY_PREFIX = "msgq:"
INDEX_KEY = KEY_PREFIX + "jobs"  # ZSET id -> created ms, for listing
ACTIVE_KEY = KEY_PREFIX + "active"  # ZSET id -> created ms of every job not yet terminal
BATCHES_KEY = KEY_PREFIX + "batches"  # ZSET batch id -> expires_at ms, until the batch expires
DONE_CHANNEL = KEY_PREFIX + "done"  # pub/sub: a job ID each time a record turns terminal
REPLICATION_PROBE = KEY_PREFIX + "replicated"  # pub/sub: a write for WAIT to count from
PAUSE_KEY = KEY_PREFIX + "paused"  # the fleet's spend-limit pause (value: the reason)
RECONCILER_LOCK = KEY_PREFIX + "reconciler:lock"  # one fleet-wide reconciler at a time
WEBHOOKS_KEY = KEY_PREFIX + "webhooks"  # HASH webhook outbox: "job:<id>"/"batch:<id>" -> JSON
WEBHOOKS_DUE_KEY = KEY_PREFIX + "webhooks:due"  # ZSET entry -> ms when due (or its lease ends)
MODELS_KEY = KEY_PREFIX + "models"  # JSON: GET /v1/models as a worker last read it (all pages)
# ZSET JSON [id, tenant, model, status] -> ms when that terminal record's TTL ends: what the
# reconciler takes out of the job indexes then (msgq.jobs.indexes.prune_expired).
EXPIRING_KEY = KEY_PREFIX + "expiring"


# The fair-share scheduler (msgq.tenancy.scheduling, worker.dispatch.dispatcher).
SCHED_BACKLOG = KEY_PREFIX + "sched:backlog"  # SET of scheduler queue keys that may hold jobs
SCHED_WHERE = KEY_PREFIX + "sched:where"  # HASH job id -> the scheduler queue key holding it
SCHED_EST = KEY_PREFIX + "sched:est"  # HASH job id -> JSON admission estimate
SCHED_INBOX = KEY_PREFIX + "sched:inbox"  # ZSET: raw producers' jobs for the dispatcher
SCHED_WAKE = KEY_PREFIX + "sched:wake"  # pub/sub: a job was scheduled
QUEUE_WAKE = KEY_PREFIX + "queue:wake"  # pub/sub: the dispatcher made jobs ready in arq's queue
SCHED_DEADLINES = KEY_PREFIX + "sched:deadlines"  # ZSET job id -> deadline ms, while it waits
TICKETS_KEY = KEY_PREFIX + "tickets"  # ZSET job id -> ms admitted, while its ticket is held
FLEET_WORKERS = KEY_PREFIX + "fleet:workers"  # HASH worker id -> JSON slots and last-seen ms
FLEET_POLICY = KEY_PREFIX + "fleet:policy"  # JSON: the fleet's scheduler switch and tenants
DISPATCHER_LOCK = KEY_PREFIX + "dispatcher:lock"  # one dispatcher fleet-wide
SPEND_TENANTS = KEY_PREFIX + "spend:tenants"  # SET of tenants with spend recorded


def sched_queue_key(model_cls: str, priority: str, tenant: str | None) -> str:
    """FIFO (ZSET by submission ms) of one tenant's jobs at one priority for one model class.

    Named by a digest of the three, never by the strings themselves: a model name or tenant is
    caller input, and a key that embeds it could be parsed back as another queue. The queue's
    identity travels with each job as data (`msgq.tenancy.scheduling.Waiting`)."""
    digest = hashlib.sha256(orjson.dumps([model_cls, priority, tenant])).hexdigest()[:32]
    return f"{KEY_PREFIX}sched:q:{digest}"


LEDGER_OPEN = KEY_PREFIX + "ledger:open"  # ZSET job id -> ms its ledger was opened


def ledger_key(job_id: str) -> str:
    """HASH of the reservations a job holds while it sends (msgq.ledger), one field each."""
    return f"{KEY_PREFIX}ledger:{job_id}"


def admitted_key(job_id: str) -> str:
    """Set by the dispatcher when it admitted the job under the rate limits and budget: the
    worker then sends at once, and settles against this estimate."""
    return f"{KEY_PREFIX}admitted:{job_id}"


def spend_key(tenant: str, period: str) -> str:
    """USD reserved + spent by a tenant in a period (`d20261125` or `m202611`)."""
    return f"{KEY_PREFIX}spend:{tenant}:{period}"


def spend_models_key(tenant: str, day: str) -> str:
    """HASH model -> USD actually spent that day (for usage reports and the dashboard)."""
    return f"{KEY_PREFIX}spend:{tenant}:{day}:models"


def record_key(job_id: str) -> str:
    return f"{KEY_PREFIX}job:{job_id}"


def status_jobs_key(status: str) -> str:
    """ZSET id -> created ms of the jobs in one status (msgq.jobs.indexes keeps it)."""
    return f"{KEY_PREFIX}status:{status}:jobs"


def model_jobs_key(model: str) -> str:
    """ZSET id -> created ms of the jobs asking for one model (msgq.jobs.indexes keeps it)."""
    return f"{KEY_PREFIX}model:{model}:jobs"


def minute_key(kind: str, minute: int, tenant: str | None = None) -> str:
    """Per-minute counter (succeeded, failed, 429, ...), fleet-wide or one tenant's; 2 h TTL."""
    scope = f"tenant:{tenant}:" if tenant else ""
    return f"{KEY_PREFIX}minute:{scope}{kind}:{minute}"


def ui_session_key(session_hash: str) -> str:
    """A dashboard session (JSON: role, tenant, CSRF token), under the SHA-256 of its cookie."""
    return f"{KEY_PREFIX}ui:session:{session_hash}"


def progress_channel(job_id: str) -> str:
    """Pub/sub: a running job's text as it streams, for live watchers (nothing is stored)."""
    return f"{KEY_PREFIX}progress:{job_id}"


RELAY_FAILED = "msgq_failed"  # a relayed attempt failed after its first event (never an API event)
RELAY_REQUEST_ID = "msgq_request_id"  # a relayed attempt's API request ID, before its events


def relay_channel(job_id: str) -> str:
    """Pub/sub: a drop-in stream's events as the worker receives them from the API (see
    worker.job.progress.Relay); only published while the API process that asked for them listens."""
    return f"{KEY_PREFIX}relay:{job_id}"


def spec_key(job_id: str) -> str:
    """A failed job's spec, kept so `msgq retry` can re-run it."""
    return f"{KEY_PREFIX}spec:{job_id}"


def tenant_jobs_key(tenant: str) -> str:
    return f"{KEY_PREFIX}tenant:{tenant}:jobs"


def batch_key(batch_id: str) -> str:
    return f"{KEY_PREFIX}batch:{batch_id}"


def batch_ids_key(batch_id: str) -> str:
    return f"{KEY_PREFIX}batch:{batch_id}:ids"


def batch_counts_key(batch_id: str) -> str:
    return f"{KEY_PREFIX}batch:{batch_id}:counts"


def tenant_batches_key(tenant: str) -> str:
    return f"{KEY_PREFIX}tenant:{tenant}:batches"


def bucket_key(model_cls: str) -> str:
    """The rate-limit buckets (requests, input, output tokens) of one model class."""
    return f"{KEY_PREFIX}ratelimit:{model_cls}"


def cooldown_key(model_cls: str) -> str:
    return f"{KEY_PREFIX}ratelimit:{model_cls}:cooldown"


# Exists while any model class cools down (as long as the longest): the worker's pick-up reads it
# with the job, without knowing the job's model yet, to know whether the limiter can be skipped.
COOLING_KEY = KEY_PREFIX + "ratelimit:cooling"


def arq_job_key(job_id: str) -> str:
    """The queued job's payload (the queue library's key)."""
    return arq_format.JOB_KEY_PREFIX + job_id


def in_progress_key(job_id: str) -> str:
    """The lock a worker holds while it runs the job (the queue library's key)."""
    return arq_format.IN_PROGRESS_KEY_PREFIX + job_id


def abort_key() -> str:
    """The set of job IDs whose running attempt should be aborted."""
    return arq_format.ABORT_KEY


def health_check_key(queue_name: str) -> str:
    """Written by every live worker at its health-check interval."""
    return queue_name + arq_format.HEALTH_CHECK_SUFFIX


# The batch lane (msgq.lanes, worker.lane.pool, worker.lane.poller).
LANE_POOL = KEY_PREFIX + "lane:pool"  # ZSET job id -> ms pooled: batch-lane jobs not yet sent
LANE_POOL_BYTES = KEY_PREFIX + "lane:pool:bytes"  # the pooled specs' total size
LANE_WHERE = KEY_PREFIX + "lane:where"  # HASH job id -> "pool" or the msgq upstream-batch handle
LANE_BATCHES = KEY_PREFIX + "lane:batches"  # ZSET upstream-batch handle -> ms when next due
LANE_ADOPTED = KEY_PREFIX + "lane:adopted"  # ZSET upstream msgbatch id -> created ms (claimed)
LANE_LOCK = KEY_PREFIX + "lane:lock"  # one batch-lane manager (batcher + poller) fleet-wide
LANE_BUDGETS = KEY_PREFIX + "lane:budgets"  # HASH job id -> its budget reservation (JSON)


def lane_spec_key(job_id: str) -> str:
    """A batch-lane job's spec while it is pooled or upstream (arq's payload is gone by then)."""
    return f"{KEY_PREFIX}lane:spec:{job_id}"


def lane_batch_key(handle: str) -> str:
    """One upstream batch as msgq sees it (JSON: state, upstream id, counts, timing)."""
    return f"{KEY_PREFIX}lane:ub:{handle}"


def lane_batch_members_key(handle: str) -> str:
    """HASH custom_id -> job id of the requests in one upstream batch."""
    return f"{KEY_PREFIX}lane:ub:{handle}:members"


def lane_batch_order_key(handle: str) -> str:
    """LIST of custom_ids in the order they are sent (the create body streams from it)."""
    return f"{KEY_PREFIX}lane:ub:{handle}:order"
