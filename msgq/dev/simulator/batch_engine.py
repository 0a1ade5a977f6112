"""The simulator's Message Batches: when each request finishes, what it ends as, and the
batch object the API would show. Answers come from the realtime engine (`build_message`), so
one request gives the same Message in both lanes; only `usage.service_tier` says "batch".

Time is compressed: a batch takes `processing_s` (its requests finish evenly over it) and
expires `expiry_s` after creation (the API's 24 h), so expiry can be tested in seconds.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from msgq.dev.simulator.checks import refusal
from msgq.dev.simulator.replies import build_message
from msgq.dev.simulator.versions import version_refusal
from schemas import field_errors, summarize, validate_request

CANCEL_S = 0.2  # a cancelled batch is `canceling` this long before it has ended


@dataclass
class BatchConfig:
    """Set by `msgq simulator --batch-*` flags; tests change it through /_sim/batch-config.
    Each batch keeps the configuration it was created under."""

    processing_s: float = 2.0
    expiry_s: float = 24 * 3600.0
    errored_rate: float = 0.0
    error_type: str = "overloaded_error"  # what the errored requests answer
    expired_rate: float = 0.0
    fault_rates: dict[int, float] = field(default_factory=dict)  # batch endpoints: status -> rate


@dataclass
class SimBatch:
    id: str
    key: str
    requests: list[tuple[str, dict[str, Any]]]
    config: BatchConfig
    seed: int
    output_tokens: int | None
    version: str | None = None  # the create call's anthropic-version: its body rules apply
    betas: list[str] = field(default_factory=list)  # the create call's anthropic-beta names
    created_at: float = field(default_factory=time.time)
    cancel_at: float | None = None
    _outcomes: list[str] | None = None

    @property
    def end_at(self) -> float:
        end = self.created_at + self.config.processing_s
        if self.cancel_at is not None:
            end = min(end, self.cancel_at + CANCEL_S)
        return min(end, self.created_at + self.config.expiry_s)

    def ended(self, now: float) -> bool:
        return now >= self.end_at

    def outcome(self, index: int) -> str:
        """succeeded | errored | canceled | expired: fixed by the time the batch ends."""
        custom_id, params = self.requests[index]
        done_at = self.created_at + self.config.processing_s * (index + 1) / len(self.requests)
        if self.cancel_at is not None and done_at > self.cancel_at:
            return "canceled"
        if done_at > self.created_at + self.config.expiry_s or self._roll(custom_id, "expired"):
            return "expired"
        if self._roll(custom_id, "errored") or _invalid(params, self.version) is not None:
            return "errored"
        return "succeeded"

    def _roll(self, custom_id: str, kind: str) -> bool:
        rate = self.config.expired_rate if kind == "expired" else self.config.errored_rate
        digest = hashlib.sha256(f"{self.seed}:{self.id}:{custom_id}:{kind}".encode()).digest()
        return int.from_bytes(digest[:8]) / 2**64 < rate

    def counts(self, now: float) -> dict[str, int]:
        if not self.ended(now):
            return {"processing": len(self.requests)} | dict.fromkeys(
                ("succeeded", "errored", "canceled", "expired"), 0
            )
        if self._outcomes is None:
            self._outcomes = [self.outcome(i) for i in range(len(self.requests))]
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        for kind in self._outcomes:
            counts[kind] += 1
        return counts

    def view(self, base_url: str, now: float) -> dict[str, Any]:
        ended = self.ended(now)
        status = "ended" if ended else "canceling" if self.cancel_at else "in_progress"
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": self.counts(now),
            "created_at": _rfc3339(self.created_at),
            "expires_at": _rfc3339(self.created_at + self.config.expiry_s),
            "ended_at": _rfc3339(self.end_at) if ended else None,
            "cancel_initiated_at": _rfc3339(self.cancel_at) if self.cancel_at else None,
            "archived_at": None,
            "results_url": f"{base_url}/v1/messages/batches/{self.id}/results" if ended else None,
        }

    def result(self, index: int) -> dict[str, Any]:
        """One JSONL row of the results file."""
        custom_id, params = self.requests[index]
        kind = self.outcome(index)
        if kind == "errored":
            invalid = _invalid(params, self.version)
            error_type = "invalid_request_error" if invalid else self.config.error_type
            error = {"type": error_type, "message": invalid or f"simulated {error_type}"}
            request_id = "req_sim" + hashlib.sha256(f"{self.id}{custom_id}".encode()).hexdigest()
            body = {"type": "error", "error": error, "request_id": request_id[:31]}
            return {"custom_id": custom_id, "result": {"type": "errored", "error": body}}
        if kind != "succeeded":
            return {"custom_id": custom_id, "result": {"type": kind}}
        answer = build_message(
            params,
            seed=self.seed,
            request_id=f"{self.id}:{custom_id}",
            output_tokens=self.output_tokens,
        )
        answer["usage"]["service_tier"] = "batch"
        return {"custom_id": custom_id, "result": {"type": "succeeded", "message": answer}}


def new_batch_id() -> str:
    return "msgbatch_sim" + secrets.token_hex(10)


def _invalid(params: dict[str, Any], version: str | None) -> str | None:
    """What the API would answer `invalid_request_error` for, inside a batch."""
    removed = version_refusal(params, version)
    if removed is not None:
        return removed
    refused = refusal(params)
    if refused is not None:
        return refused[1]
    if params.get("stream") is True:
        return "stream: streaming is not supported inside a batch"
    try:
        validate_request(params, in_batch=True)
    except ValidationError as exc:
        return summarize(field_errors(exc, params), 3)
    return None


def _rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
