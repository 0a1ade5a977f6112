# msgq: every entry point creates the virtual environment it needs first.
.DEFAULT_GOAL := all
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help setup demo test lint format typecheck all clean bench chaos

help:  ## list the targets
	@grep -E '^[a-z]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install msgq with its dev tools

demo: $(STAMP)  ## start Redis + simulator + worker, run the four sample jobs and a caption run, stop
	$(BIN)/python -m worker.dev.demo

test: $(STAMP)  ## the whole suite: starts its own Redis and simulator
	$(BIN)/pytest

lint: $(STAMP)  ## ruff + mypy, check only
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: $(STAMP)
	$(BIN)/mypy

all: lint test

clean:  ## remove the venv, caches and local data
	rm -rf $(VENV) .msgq .pytest_cache .mypy_cache .ruff_cache

bench: $(STAMP)  ## benchmarks against baselines in the same run; writes BENCHMARKS.md (~8 min)
	$(BIN)/python -m bench.run

chaos: $(STAMP)  ## the long fault runs: 2,000-job crash run, Redis restart, 10,000 fuzz cases each
	MSGQ_CHAOS=1 $(BIN)/pytest -s tests/test_reliability.py tests/test_fuzz.py
