"""Who a job belongs to and what it may spend: tenants and their policy, day budgets, and the
fair-share scheduler's queues."""
