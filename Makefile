# Two commands do all set-up on a fresh machine: `make test` and `make run`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.faceattr-installed
# pip prints a warning line per package for the machine's missing local indexes; keep logs readable.
# (grep exits 1 when it filters every line; pip's own failure still fails the pipe under pipefail.)
PIP_QUIET := { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: setup test run airflow bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | $(PIP_QUIET)
	$(BIN)/python -m pip install -q -e '.[dev]' 2>&1 | $(PIP_QUIET)
	$(BIN)/python -c "import faceattr, torch, torchvision, airflow, celery, psycopg2"
	test -x $(BIN)/lint-imports  # import-linter, from the dev extra: `make test` runs it
	touch $(STAMP)

# The import contracts (pyproject's [tool.importlinter]) first: a broken layer fails in seconds.
# pytest exits 5 when it collects nothing; testpaths always holds the suite, so only PYTEST_ARGS
# that deselect every test get there, and that fails the target as it should.
test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

run: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/run.sh

airflow: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/airflow.sh

bench: $(STAMP)
	$(BIN)/faceattr bench

clean:
	rm -rf .airflow data runs .pytest_cache
