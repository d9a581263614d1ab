# make run:  a virtualenv, giftrelay installed, the relay on the embedded default.
# make test: the dev extras installed, then lint, types and the whole test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint check bench-money clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/giftrelay serve

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

check: $(VENV)/.installed-dev
	$(BIN)/pytest

test: lint check

bench-money: $(VENV)/.installed-dev
	$(BIN)/python -m loadtest.bench_money

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
