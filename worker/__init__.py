"""msgq's service: producer client, arq worker, upstream call, store, CLI and simulator."""
