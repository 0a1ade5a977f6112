"""msgq's service. Subsystems are folders; the core modules every one of them uses sit here.

core (this folder): settings, errors, keys (every Redis key name), arq_adapter (every use of
arq), records (pure record transitions), store, endings (waiting for a job to end), client
(the producer), batches, pricing, estimate, logs, fleet_metrics; webhooks/ (Standard Webhooks
signing, the SSRF policy for targets, the outbox written with terminal records).
runtime/  the worker: arq task, attempt, transitions, upstream call, rate limiter, concurrency.
http/     `msgq api`: FastAPI app, job and batch routes, auth, body limit, error mapping.
caption/  `msgq caption`: inputs, image preparation, the windowed run, output, report.
cli/      the `msgq` command.
dev/      `msgq dev`, `make demo` and the simulator: embedded Redis, the stack, the stand-in API.
Imports only go down: subsystems import core, core imports no subsystem (import-linter checks).
"""
