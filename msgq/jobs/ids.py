"""A job's two IDs: the one its tenant chose or was given (public) and the one it is stored
under (scoped: `tenant:id`, so two tenants may use the same ID without meeting). A job without a
tenant (a Python or raw-Redis producer naming none) is stored under its public ID."""

from __future__ import annotations

from schemas import JobRecord


def scoped_id(tenant: str | None, job_id: str) -> str:
    """The stored ID of a tenant's job."""
    return f"{tenant}:{job_id}" if tenant else job_id


def public_id(record: JobRecord) -> str:
    """The ID the tenant chose or was given: the stored ID without its `tenant:` prefix."""
    prefix = f"{record.tenant}:" if record.tenant else ""
    return record.id[len(prefix) :] if prefix and record.id.startswith(prefix) else record.id
