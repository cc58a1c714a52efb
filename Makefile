# The two commands of the README: `make demo` (the main job) and `make test`.
# Both install what is missing first (idempotent), then start the local servers.
SHELL := /bin/bash
VENV := .venv
ABACUS := $(VENV)/bin/abacus
# PyFlink's thread mode runs the virtualenv's python: its bin must come first on PATH
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install up down test test-unit lint demo clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed
	$(ABACUS) services install

up: install
	$(ABACUS) services up

down:
	$(ABACUS) services down

test-unit: $(VENV)/.installed
	$(VENV)/bin/pytest tests/unit

test: up
	$(ABACUS) schema apply
	$(VENV)/bin/pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy counting

demo: up
	$(ABACUS) schema apply
	mkdir -p out
	$(ABACUS) generate --n 20000 --seed 1 --duplicates 0.01 --late 0.02 --out out/sample.jsonl
	$(ABACUS) recount --events out/sample.jsonl --rejects out/rejects.jsonl > out/counts.jsonl
	@echo "reference counts: out/counts.jsonl ($$(wc -l < out/counts.jsonl) counters)"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
