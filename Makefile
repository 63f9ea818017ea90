# Atelier: `make up` on a fresh Debian 12 host gives a running server.
# Everything goes through scripts/setup.sh, so the same steps work without make.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
# Tests share one base template build, kept between runs.
export ATELIER_TEST_DATA_DIR ?= /var/tmp/atelier-test
PYTEST_ARGS ?=

.PHONY: help up down deps template test check lint typecheck bench openapi clean

help:
	@echo "make up         install what is missing, build the base template, start the server"
	@echo "make down       stop the server (sandboxes keep running)"
	@echo "make deps       Debian packages + .venv + the project (idempotent)"
	@echo "make test       deps, base template for tests, the whole pytest suite (PYTEST_ARGS=...)"
	@echo "make check      lint + typecheck + test"
	@echo "make lint | typecheck | bench | openapi | clean"

up:
	scripts/setup.sh up

down:
	scripts/atelierctl stop

deps:
	scripts/setup.sh deps

# the templates the test suite uses (built once, reused by later runs)
template:
	ATELIER_DATA_DIR="$(ATELIER_TEST_DATA_DIR)" scripts/setup.sh template
	ATELIER_DATA_DIR="$(ATELIER_TEST_DATA_DIR)" scripts/setup.sh code-interpreter-template

test: template
	scripts/setup.sh test-deps
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: deps
	$(VENV)/bin/mypy src

check: lint typecheck test

# every benchmark prints one JSON object as its last line
bench: deps
	@shopt -s nullglob; for b in bench/[!_]*.py; do echo "== $$b" >&2; $(PY) "$$b"; done

openapi: deps
	$(PY) -m atelier.api.openapi > docs/openapi.json.tmp
	mv docs/openapi.json.tmp docs/openapi.json

# stops the server and removes caches; never touches the data dir
clean:
	-scripts/atelierctl stop
	rm -rf .pytest_cache .mypy_cache .ruff_cache build dist
	find src tests bench -name __pycache__ -type d -prune -exec rm -rf {} +
