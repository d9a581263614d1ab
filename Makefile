# make run:  a virtualenv with exactly the locked versions, the relay on the embedded default.
# make test: the dev extras (locked too), then lint, types and the whole test suite.
# make lock: refresh uv.lock to the newest versions pyproject.toml allows (then make test,
#            and commit both together).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The lock tool, from the package registry; pyproject's [tool.uv] required-version agrees.
UV_VERSION := 0.13.9
UV := UV_PROJECT_ENVIRONMENT=$(VENV) $(BIN)/uv
# --inexact keeps pip and uv themselves in the virtualenv; --frozen installs the lock as
# it is and fails rather than re-resolve when pyproject.toml and uv.lock disagree.
SYNC := $(UV) sync --frozen --inexact --no-python-downloads --python $(BIN)/python

.PHONY: run test lint check lock bench-money clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(BIN)/uv: $(BIN)/python
	$(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"

$(VENV)/.installed: $(BIN)/uv pyproject.toml uv.lock
	$(SYNC)
	touch $@

$(VENV)/.installed-dev: $(BIN)/uv pyproject.toml uv.lock
	$(SYNC) --extra dev
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

lock: $(BIN)/uv
	$(UV) lock --upgrade

bench-money: $(VENV)/.installed-dev
	$(BIN)/python -m loadtest.micro.bench_money

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
