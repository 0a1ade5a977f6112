# msgq: every entry point creates the virtual environment it needs first.
.DEFAULT_GOAL := all
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help setup demo test test-cluster test-partitions lint format typecheck all clean bench chaos lock docs

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# The versions the suite passed with: requirements.lock (every extra + the test tools).
$(STAMP): pyproject.toml requirements.lock
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install msgq[all] + test tools from requirements.lock

lock:  ## re-resolve requirements.lock from pyproject.toml (then run make test before committing)
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra all --extra test --universal \
		--python-version 3.11 --upgrade -o requirements.lock

demo: $(STAMP)  ## start Redis + simulator + worker, run the four sample jobs and a caption run, stop
	$(BIN)/python -m msgq.dev.demo

# Tests that start Redis Clusters of their own (failover, slot moves): in `make test-cluster`.
CLUSTER_OWN := tests/test_redis_cluster.py tests/test_cluster_failover.py tests/test_slot_routing.py

test: $(STAMP)  ## the whole suite: starts its own Redis and simulator
	$(BIN)/pytest $(addprefix --ignore=,$(CLUSTER_OWN))

# The core suite once more on a real 3-master Redis Cluster (tests/conftest.py starts it):
# submit by client, CLI, HTTP and raw Redis; the drop-in; tenants and budgets; the batch lane;
# webhooks; cancel, retry, deadlines; the ledger; audit; streams and wakes (sharded pub/sub).
CLUSTER_SUITE := tests/test_job_life.py tests/test_api.py tests/test_cli.py \
	tests/test_raw_tenant.py tests/test_tenants.py tests/test_tenant_isolation.py \
	tests/test_retries.py tests/test_ledger.py tests/test_admission.py \
	tests/test_dropin_sdk.py tests/test_dropin_life.py tests/test_batch_lane.py \
	tests/test_webhooks.py tests/test_reconcile_audit.py tests/test_worker_loop.py \
	tests/test_every_job_ends.py tests/test_dropin_relay.py tests/test_streaming.py \
	tests/test_idle_wake.py tests/test_budget_steps.py tests/test_merged_settlement.py \
	tests/test_dispatch_pacing.py tests/test_webhook_wake.py

test-cluster: $(STAMP)  ## the core suite on a real 3-master Redis Cluster, and the cluster's own tests
	TEST_REDIS_CLUSTER=1 $(BIN)/pytest $(CLUSTER_SUITE)
	$(BIN)/pytest $(CLUSTER_OWN)

# The core suite once more with the deployment split into 4 partitions (docs/design/partitions.md),
# with the dashboard's and the audit's reads across them.
PARTITION_SUITE := $(CLUSTER_SUITE) tests/test_ui.py tests/test_partitions.py tests/test_gather.py

test-partitions: $(STAMP)  ## the core suite with 4 partitions on one node, then 16 on a 3-master cluster
	TEST_PARTITIONS=4 $(BIN)/pytest $(PARTITION_SUITE)
	TEST_REDIS_CLUSTER=1 TEST_PARTITIONS=16 $(BIN)/pytest $(PARTITION_SUITE) tests/test_cluster_failover.py

docs: $(STAMP)  ## build the docs site into site/ (reference pages generated from the code; strict)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: $(STAMP)  ## ruff + mypy + the layering contracts (import-linter), check only
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(STAMP)
	$(BIN)/mypy

all: lint test

clean:  ## remove the venv, caches and local data
	rm -rf $(VENV) .msgq .pytest_cache .mypy_cache .ruff_cache site

bench: $(STAMP)  ## benchmarks against baselines in the same run; writes BENCHMARKS.md (~30 min)
	$(BIN)/python -m bench.run

chaos: $(STAMP)  ## the long fault runs: 2,000-job crash run, Redis restart, mixed faults + audit, 10,000 fuzz cases, 1,000-job Sentinel and Cluster failovers, 100,000-job index soak
	MSGQ_CHAOS=1 $(BIN)/pytest -s tests/test_reliability.py tests/test_chaos_mix.py tests/test_fuzz.py tests/test_sentinel.py tests/test_cluster_failover.py tests/test_soak_indexes.py
	MSGQ_CHAOS=1 TEST_PARTITIONS=16 $(BIN)/pytest -s tests/test_cluster_failover.py
