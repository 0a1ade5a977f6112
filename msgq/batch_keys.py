"""The key names of batches: the Batches API's and the batch lane's (a part of
`msgq.keys.Keyspace`, kept apart so each module stays one screenful of names)."""

from __future__ import annotations


class BatchKeys:
    """Mixed into `Keyspace`, which provides `prefix`."""

    @property
    def prefix(self) -> str:
        raise NotImplementedError

    def _of(self, job_id: str) -> BatchKeys:
        raise NotImplementedError

    # ------------------------------------------------------------ batches (the Batches API)

    @property
    def batches_key(self) -> str:  # ZSET batch id -> expires_at ms, until the batch expires
        return self.prefix + "batches"

    # A batch's own keys are in its partition, with its jobs (`msgq.keys.partition_key`).
    def batch_key(self, batch_id: str) -> str:
        return f"{self._of(batch_id).prefix}batch:{batch_id}"

    def batch_ids_key(self, batch_id: str) -> str:
        return f"{self._of(batch_id).prefix}batch:{batch_id}:ids"

    def batch_counts_key(self, batch_id: str) -> str:
        return f"{self._of(batch_id).prefix}batch:{batch_id}:counts"

    def tenant_batches_key(self, tenant: str) -> str:
        return f"{self.prefix}tenant:{tenant}:batches"

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
    def lane_sizes(self) -> str:  # HASH job id -> its spec's size (the spec is in its partition)
        return self.prefix + "lane:sizes"

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
        return f"{self._of(job_id).prefix}lane:spec:{job_id}"

    def lane_batch_key(self, handle: str) -> str:
        """One upstream batch as msgq sees it (JSON: state, upstream id, counts, timing)."""
        return f"{self.prefix}lane:ub:{handle}"

    def lane_batch_members_key(self, handle: str) -> str:
        """HASH custom_id -> job id of the requests in one upstream batch."""
        return f"{self.prefix}lane:ub:{handle}:members"

    def lane_batch_order_key(self, handle: str) -> str:
        """LIST of custom_ids in the order they are sent (the create body streams from it)."""
        return f"{self.prefix}lane:ub:{handle}:order"
