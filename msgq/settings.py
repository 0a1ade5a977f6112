"""Settings: the only module that reads the environment (pydantic-settings, env first)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from msgq.pricing import check_prices_file
from msgq.redis_settings import RedisSettings
from msgq.tenancy.tenants import load_tenants
from msgq.webhooks.signing import secret_key
from schemas import DEFAULT_MAX_IMAGE_BYTES, Lane

UNTIL_RESUME = frozenset({"0", "until-resume", "none"})


class Settings(RedisSettings):
    """Every knob, with its default. `msgq --help` and the README list them (Redis's first,
    from `RedisSettings`)."""

    model_config = SettingsConfigDict(env_prefix="MSGQ_", env_file=".env", extra="ignore")

    anthropic_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("MSGQ_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY"),
        description="the organisation's API key; never logged or stored",
    )
    anthropic_base_url: str = Field(
        default="https://api.anthropic.com",
        validation_alias=AliasChoices("MSGQ_ANTHROPIC_BASE_URL", "ANTHROPIC_BASE_URL"),
    )
    anthropic_version: str = Field(
        default="2023-06-01",
        description="the API version sent for jobs that name none (a job's own wins)",
    )
    anthropic_beta: str | None = Field(
        default=None,
        description="comma-separated beta names sent for jobs that name none (a job's own win)",
    )
    http_anthropic_version_default: str | None = Field(
        default=None,
        description="the drop-in and Batches routes require an anthropic-version header, as the "
        "API does; set this to accept older clients that send none (their jobs get this "
        "version; /v1/jobs uses it too, before the fleet's default)",
    )
    models_refresh_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="how often a worker re-reads GET /v1/models into Redis (and at start)",
    )
    max_jobs: int = Field(
        default=256,
        ge=1,
        description="calls in flight per worker process: a call waits seconds on the network, "
        "so size it by Little's law (README: sizing a fleet)",
    )
    max_inflight_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=1,
        description="the job payload bytes one worker holds in flight; it takes no new job "
        "beyond this (vision jobs carry megabytes), whatever max_jobs allows",
    )
    max_attempts: int = Field(default=8, ge=1, description="API calls per job before it fails")
    backoff_base_s: float = 1.0
    backoff_factor: float = 2.0
    backoff_max_s: float = 60.0
    request_timeout_s: float = Field(
        default=600.0, description="wait for the API to start answering (unstreamed: to finish)"
    )
    connect_timeout_s: float = 5.0
    stream_idle_timeout_s: float = Field(
        default=60.0, gt=0, description="longest gap between streamed events (the API pings)"
    )
    stream_min_max_tokens: int = Field(
        default=1024,
        ge=0,
        description="stream calls with max_tokens at least this (0: all); shorter calls end "
        "well within request_timeout_s, and a plain call costs the worker less",
    )
    job_timeout_s: float = Field(
        default=3600.0, description="ceiling on one attempt, however long it keeps streaming"
    )
    lock_s: float = Field(
        default=15.0, description="in-progress lock; a heartbeat extends it while the job runs"
    )
    poll_delay_s: float = Field(
        default=1.0,
        gt=0,
        description="idle poll interval, for jobs nobody announces (a raw producer that does not "
        "publish the wake, a dead worker's lapsed lock); msgq's producers and the dispatcher "
        "wake idle workers at once, and a retry is polled for when it comes due",
    )
    shutdown_grace_s: int = Field(default=60, description="SIGTERM: wait this long for jobs")
    answer_hold_s: float = Field(
        default=60.0,
        ge=0,
        description="a paid-for answer that cannot be stored (Redis unreachable) is held by its "
        "worker and stored once Redis answers, for up to this long; past it the job runs, and is "
        "billed, again",
    )
    answer_hold_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=0,
        description="the answers one worker holds through a Redis outage, in bytes (their JSON); "
        "one past it is given up at once",
    )
    retention_s: int = Field(default=7 * 24 * 3600, description="keep records after a job ends")
    batch_retention_s: int = Field(
        default=29 * 24 * 3600, description="keep a batch and its results (as the Batches API)"
    )
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_job_bytes: int = Field(
        default=64 * 1024 * 1024, description="largest job payload a worker will decode"
    )
    prices_file: Path | None = Field(default=None, description="TOML overriding model prices")
    uvloop: str = Field(
        default="auto",
        pattern="^(auto|true|false)$",
        description="the worker's event loop: uvloop when installed (auto), always, or never",
    )
    scheduler: bool = Field(
        default=True,
        description="fair-share admission (priorities, tenant weights, budgets); off: plain FIFO",
    )
    bulk_floor_share: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="share of tokens default and bulk keep while higher priorities are backlogged",
    )
    dispatch_window: int = Field(
        default=16,
        ge=0,
        description="jobs the dispatcher admits beyond the fleet's free worker slots, so a "
        "freed slot finds its next job at once",
    )
    admit_initial_window: int = Field(
        default=32,
        ge=1,
        description="calls in flight the fleet starts with before any rate limit is known "
        "(configured or learned from headers); grows per answer, halves on a 429",
    )
    tenants_file: Path | None = Field(
        default=None,
        description="TOML: per-tenant weight, priority, caps, budgets, lane, webhook (README)",
    )
    rate_limits: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description='per model class, JSON: {"haiku": {"rpm": 1000, "itpm": 2000000, "otpm": '
        '400000}, "default": {...}}; learned from response headers when absent',
    )
    max_limiter_wait_s: float = Field(
        default=2.0, description="longer rate-limit waits free the slot (arq deferral)"
    )
    max_slot_wait_s: float = Field(
        default=30.0, description="longest wait for a worker slot before the job is handed back"
    )
    slot_retry_s: float = Field(default=1.0, description="when a handed-back job is tried again")
    reconcile_interval_s: float = Field(
        default=30.0, description="how often one worker looks for orphaned jobs and batches"
    )
    spend_pause_s: int | None = Field(
        default=3600,
        ge=1,
        description="spend-limit pause length; 0 or until-resume: until `msgq resume`",
    )

    @field_validator("prices_file")
    @classmethod
    def _readable_prices(cls, value: Path | None) -> Path | None:
        if value is not None:
            check_prices_file(value)
        return value

    @field_validator("tenants_file")
    @classmethod
    def _readable_tenants(cls, value: Path | None) -> Path | None:
        if value is not None:
            load_tenants(value)  # raises TenantsFileError (a ValueError) with one clear line
        return value

    @field_validator("rate_limits")
    @classmethod
    def _known_limit_names(cls, value: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        for model_class, limits in value.items():
            unknown = set(limits) - {"rpm", "itpm", "otpm"}
            if unknown:
                msg = f"{model_class}: unknown limit {sorted(unknown)}; use rpm, itpm, otpm"
                raise ValueError(msg)
        return value

    @field_validator("spend_pause_s", mode="before")
    @classmethod
    def _pause_spelling(cls, value: Any) -> Any:
        """Empty means the default; `0` and `until-resume` mean no expiry (an operator lifts it).

        Redis refuses an expiry of 0, so "until resume" must become no expiry at all.
        """
        if isinstance(value, str) and not value.strip():
            return 3600
        if isinstance(value, str) and value.strip().lower() in UNTIL_RESUME:
            return None
        if value == 0:
            return None
        return value

    pause_recheck_s: float = Field(default=30.0, description="how often paused jobs look again")
    batch_sla_s: float = Field(
        default=24 * 3600.0,
        gt=0,
        description="lane auto: batch only when the deadline is at least this far away",
    )
    batches_lane: Lane = Field(
        default=Lane.REALTIME,
        description="lane of /v1/messages/batches requests (a tenant's batches_lane wins)",
    )
    batch_max_requests: int = Field(
        default=100_000, ge=1, le=100_000, description="flush an upstream batch at this many"
    )
    batch_max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        le=256 * 1024 * 1024,
        description="flush an upstream batch at this size (the API's limit: 256 MB)",
    )
    batch_max_wait_s: float = Field(
        default=60.0, gt=0, description="flush an upstream batch this long after its first job"
    )
    batch_poll_s: float = Field(
        default=10.0, gt=0, description="first poll of an upstream batch; doubles while it runs"
    )
    batch_poll_max_s: float = Field(
        default=300.0, gt=0, description="longest gap between polls of an upstream batch"
    )
    batch_create_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="a batch create unanswered this long is looked up (adopted) or re-sent",
    )
    metrics_port: int | None = Field(default=None, description="worker /metrics port")
    metrics_tenants: bool = Field(
        default=False,
        description="the API's /metrics (no key) also names each tenant with its spend and budget",
    )
    api_keys: SecretStr | None = Field(
        default=None, description='HTTP API keys: "tenant-a:key1,tenant-b:key2"'
    )
    api_keys_file: Path | None = Field(default=None, description="one tenant:key a line")
    admin_keys: SecretStr | None = Field(
        default=None, description="dashboard (/ui) admin keys, comma-separated: all tenants"
    )
    ui_session_idle_s: int = Field(
        default=8 * 3600, gt=0, description="dashboard session: ends after this long unused"
    )
    ui_session_max_s: int = Field(
        default=24 * 3600, gt=0, description="dashboard session: ends this long after sign-in"
    )
    ui_key_recheck_s: float = Field(
        default=60.0,
        ge=0,
        le=60,
        description="dashboard: how long a session's key is trusted before the key "
        "configuration is read again (a revoked key's sessions end within this)",
    )
    trace_url_template: str | None = Field(
        default=None,
        pattern=r"^(https?://.*\{trace_id\}.*)?$",  # empty: no link
        description="dashboard: a job's trace in the tracing backend, e.g. "
        "http://jaeger:16686/trace/{trace_id}",
    )
    max_streams_per_tenant: int = Field(
        default=100,
        ge=1,
        description="SSE streams (GET /v1/jobs/{id}/events) a tenant may hold open per API "
        "process; beyond it 429",
    )
    max_dropin_calls_per_tenant: int = Field(
        default=1000,
        ge=1,
        description="drop-in calls (POST /v1/messages, streamed or not) a tenant may hold open "
        "per API process; beyond it 429",
    )
    dropin_ping_s: float = Field(
        default=5.0,
        gt=0,
        description="drop-in streams (POST /v1/messages, stream: true): a ping after this long "
        "without an event; until the first, an error can still be answered with its status",
    )
    max_body_bytes: int = Field(default=32 * 1024 * 1024, description="HTTP API body limit")
    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")
    log_level: str = "info"
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="webhook signing secret (whsec_ + base64, Standard Webhooks); each tenant "
        "signs with its own webhook_secret, else a key derived from this (msgq webhook-secret)",
    )
    webhook_allow: str | None = Field(
        default=None,
        description="webhook targets exempt from the SSRF policy: CIDRs and/or hostnames",
    )
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, description="one webhook delivery attempt (its lease: this + 5 s)"
    )
    webhook_backoff_base_s: float = Field(default=5.0, gt=0, description="first webhook retry")
    webhook_backoff_max_s: float = Field(default=3600.0, gt=0, description="longest retry gap")
    webhook_max_age_s: float = Field(
        default=24 * 3600.0, gt=0, description="keep retrying a webhook this long, then `failed`"
    )
    webhook_poll_s: float = Field(
        default=5.0,
        gt=0,
        description=(
            "how often each worker looks for webhooks no wake announced (a batch's, or after a "
            "lost wake): a job's webhook wakes the workers, and a retry is looked for when due"
        ),
    )

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret_format(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            secret_key(value.get_secret_value())  # a ValueError naming what is wrong
        return value
