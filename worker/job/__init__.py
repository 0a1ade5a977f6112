"""One job's run: the task (validate, wait for capacity, call, store), its explicit run state
(`JobRun`), admission for the attempt, progress and the drop-in relay, backoff and the worker's
adaptive concurrency."""
