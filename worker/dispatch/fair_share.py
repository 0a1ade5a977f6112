"""The fair-share policy: which waiting job a model class admits next.

- priority: interactive before default before bulk; a lower priority that is backlogged earns
  `bulk_floor_share` of the tokens admitted above it as credit, and is served when its credit
  covers its next job, so nothing starves;
- tenants: within a priority, virtual token counters (VTC, arXiv 2401.00588): the backlogged
  tenant with the least weighted service goes next, and a tenant that returns from idle starts at
  the current minimum (no banked credit).
Counters live in memory: a dispatcher failover restarts fairness from zero.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

from msgq.tenancy.tenants import Tenants
from schemas import Priority
from worker.dispatch.queues import Head

ORDER = (Priority.INTERACTIVE, Priority.DEFAULT, Priority.BULK)


@dataclass(frozen=True)
class PolicyState:
    vtc: dict[tuple[str, Priority], dict[str, float]]
    credit: dict[tuple[str, Priority], float]


class FairShare:
    def __init__(self, tenants: Tenants, bulk_floor_share: float) -> None:
        self.tenants = tenants
        self.bulk_floor_share = bulk_floor_share
        self.vtc: dict[tuple[str, Priority], dict[str, float]] = defaultdict(dict)
        self.credit: dict[tuple[str, Priority], float] = defaultdict(float)
        self.blocked: dict[str, float] = {}  # tenant -> monotonic time to look again

    def choose(self, cls: str, heads: list[Head]) -> Head | None:
        """The next job for this model class: priority with floor credit, then least VTC."""
        now = time.monotonic()
        ready = [h for h in heads if self.blocked.get(h.tenant, 0) <= now]
        by_priority = {p: [h for h in ready if h.priority is p] for p in ORDER}
        backlogged = [p for p in ORDER if by_priority[p]]
        if not backlogged:
            return None
        chosen = backlogged[0]
        for lower in backlogged[1:]:
            cheapest = min(h.tokens for h in by_priority[lower])
            if self.credit[(cls, lower)] >= cheapest:
                chosen = lower
                break
        return self._least_served(cls, chosen, by_priority[chosen])

    def _least_served(self, cls: str, priority: Priority, heads: list[Head]) -> Head:
        counters = self.vtc[(cls, priority)]
        backlogged = {h.tenant for h in heads}
        floor = min((counters[t] for t in backlogged if t in counters), default=0.0)
        for tenant in backlogged:  # returning from idle: no banked credit
            counters[tenant] = max(counters.get(tenant, floor), floor)
        for tenant in list(counters):  # idle tenants are forgotten (re-lifted when back)
            if tenant not in backlogged and counters[tenant] < floor:
                del counters[tenant]
        return min(heads, key=lambda h: (counters[h.tenant], h.tenant))

    def served(self, head: Head) -> None:
        """Charge the tenant's counter and give lower priorities their floor credit."""
        weight = self.tenants.get(head.tenant).weight
        counters = self.vtc[(head.cls, head.priority)]
        counters[head.tenant] = counters.get(head.tenant, 0.0) + head.tokens / weight
        rank = ORDER.index(head.priority)
        share = self.bulk_floor_share
        for lower in ORDER[rank + 1 :]:
            self.credit[(head.cls, lower)] += head.tokens * share / (1 - share)
        if rank > 0:
            self.credit[(head.cls, head.priority)] = max(
                0.0, self.credit[(head.cls, head.priority)] - head.tokens
            )

    def snapshot(self) -> PolicyState:
        """The counters as they are, to go back to (`restore`) when jobs charged tentatively
        (a run being collected) turn out not to be admitted."""
        return PolicyState(
            {key: dict(counters) for key, counters in self.vtc.items()}, dict(self.credit)
        )

    def restore(self, state: PolicyState) -> None:
        self.vtc = defaultdict(dict, {k: dict(c) for k, c in state.vtc.items()})
        self.credit = defaultdict(float, state.credit)

    def forget_idle_credit(self, cls: str, heads: list[Head]) -> None:
        present = {h.priority for h in heads}
        for priority in ORDER[1:]:
            if priority not in present:
                self.credit[(cls, priority)] = 0.0
