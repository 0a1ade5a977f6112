"""The `msgq` command: job verbs here, long-running services in `services`."""
