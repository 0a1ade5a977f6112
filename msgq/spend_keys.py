"""The key names of the tenants' spend (a part of `msgq.keys.Keyspace`, kept apart so each
module stays one screenful of names).

A tenant's spend counters, its spend by model and the markers of its applied budget steps
share one place, `tenant_prefix`: on one node the deployment's (the names msgq always used), on
a Redis Cluster one of 16 spend tags, chosen by a hash of the tenant, so every budget step
(reserve, settle, record) is one slot's and the tenants' steps spread over the shards instead
of all running on the deployment's slot beside the rate limiter and the scheduler. 16, not a
tag a tenant: each slot a process talks to costs it a connection pool."""

from __future__ import annotations


class SpendKeys:
    """Mixed into `Keyspace`, which provides `prefix` and `tenant_prefix`."""

    @property
    def prefix(self) -> str:
        raise NotImplementedError

    def tenant_prefix(self, tenant: str) -> str:
        raise NotImplementedError

    @property
    def spend_tenants(self) -> str:  # SET of tenants with spend recorded (the deployment's)
        return self.prefix + "spend:tenants"

    @property
    def spend_moved(self) -> str:  # set once the spend of an earlier release was carried over
        return self.prefix + "spend:moved"

    def spend_applied_key(self, tenant: str, nonce: str) -> str:
        """A budget step applied to the spend counters (`msgq.ledger`): applied once, by nonce."""
        return f"{self.tenant_prefix(tenant)}spend:applied:{nonce}"

    def spend_key(self, tenant: str, period: str) -> str:
        """USD reserved + spent by a tenant in a period (`d20261125` or `m202611`)."""
        return f"{self.tenant_prefix(tenant)}spend:{tenant}:{period}"

    def spend_models_key(self, tenant: str, day: str) -> str:
        """HASH model -> USD actually spent that day (for usage reports and the dashboard)."""
        return f"{self.tenant_prefix(tenant)}spend:{tenant}:{day}:models"
