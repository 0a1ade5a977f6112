"""Webhooks (core): Standard Webhooks signing, the SSRF policy for targets, and the Redis outbox.

The outbox entry is written in the same transaction as the terminal record (`outbox.schedule`,
called by the store); `worker.webhooks` delivers it. Nothing here needs httpx,
so a producer's base install can check a `callback_url` at submission.
"""
