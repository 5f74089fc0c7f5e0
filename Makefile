# One command runs the service (`make run`), one runs the tests (`make test`).
SHELL := /bin/bash
PYTHON ?= python3
# uv from PATH, else bootstrapped from PyPI into .tools/ (needs only Python 3.11).
UV := $(or $(shell command -v uv 2>/dev/null),$(CURDIR)/.tools/bin/uv)

.PHONY: run test lint format fuzz

run: .venv/.synced
	$(UV) run oms dev

test: .venv/.synced
	$(UV) run pytest

# The suite's schemathesis run with many more examples per operation.
fuzz: .venv/.synced
	OMS_FUZZ_EXAMPLES=$${OMS_FUZZ_EXAMPLES:-1000} $(UV) run pytest tests/test_fuzz.py

lint: .venv/.synced
	$(UV) run ruff check src tests migrations
	$(UV) run ruff format --check src tests migrations
	$(UV) run mypy src

format: .venv/.synced
	$(UV) run ruff check --fix src tests migrations
	$(UV) run ruff format src tests migrations

$(CURDIR)/.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked
	touch $@
