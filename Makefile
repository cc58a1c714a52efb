# The two commands of the README: `make demo` (the main job) and `make test`.
# Both install what is missing first (idempotent), then start the local servers.
SHELL := /bin/bash
VENV := .venv
ABACUS := $(VENV)/bin/abacus
# PyFlink's thread mode runs the virtualenv's python: its bin must come first on PATH
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# the checkout's own data directory (the servers' pid files and data, the jars, job state):
# a clone (CI's) and a developer's tree never share servers (README: Configuration)
export ABACUS_SERVICES__DATA_DIR := $(CURDIR)/.abacus

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

# The jobs' Java code against counting first (JUnit, Maven Surefire): golden vectors that
# Python generates (abacus.golden, into the git-ignored abacus/jvm/target), then the tests.
GOLDEN := abacus/jvm/target/golden
test: up
	$(VENV)/bin/python -m abacus.golden $(GOLDEN)
	mvn -B -q -f abacus/jvm/pom.xml test -Dgolden.dir=$(CURDIR)/$(GOLDEN)
	$(ABACUS) schema apply
	$(VENV)/bin/pytest

# The gates CI runs before the tests; no server needed. mypy's packages: [tool.mypy] files.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# Both pipelines side by side on a generated day of events, then the three-way audit
# (legacy vs Abacus vs truth) and the HTML reports in out/. CHAOS=1 turns legacy's flaws on
# (there exit 1, "not clean", is the expected outcome: legacy drifts, Abacus stays exact).
DEMO_EVENTS ?= 4000
DEMO_RATE ?= 40
demo: up
	$(ABACUS) schema apply
	$(ABACUS) shadow run --generate $(DEMO_EVENTS) --seed 1 --rate $(DEMO_RATE) \
	  --html-dir out $(if $(filter 1,$(CHAOS)),--chaos || [ $$? -eq 1 ])

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
