# Thin wrappers over the CLI and pytest. `make dev` and `make test` are all a new user needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CODE := antifragile workflows activities workers

# `.venv` is installed by uv from the committed uv.lock: the same versions on every clone.
# uv itself comes from PyPI with pip, into its own small virtualenv `.uv/`, so a fresh clone
# needs only Python >= 3.11. `make UV=uv ...` uses a uv you already have instead.
UV_VERSION := 0.13.9
UV_HOME := .uv
UV ?= $(UV_HOME)/bin/uv
ifeq ($(UV),$(UV_HOME)/bin/uv)
UV_DEP := $(UV_HOME)/.uv-$(UV_VERSION)
endif
# uv works on `.venv` with the Python that runs make, and never downloads a Python.
UV_RUN := UV_PROJECT_ENVIRONMENT=$(VENV) UV_PYTHON=$(PYTHON) UV_PYTHON_DOWNLOADS=never $(UV)

.PHONY: dev test lint lock lock-check format bench bench-full demo worker clean install

$(UV_HOME)/.uv-$(UV_VERSION):
	@test -x $(UV_HOME)/bin/python || $(PYTHON) -m venv $(UV_HOME)
	$(UV_HOME)/bin/python -m pip install --quiet 'uv==$(UV_VERSION)'
	@rm -f $(UV_HOME)/.uv-* && touch $@

# --locked stops when pyproject.toml and uv.lock disagree instead of re-resolving; every extra
# (dev, otel, ...) because the tests use them all; the project itself stays editable.
# uv's own hint says `uv lock`, a command a fresh clone has not got: say `make lock`.
STALE_LOCK := { echo "make: uv.lock does not match pyproject.toml: run \`make lock\` and commit uv.lock" >&2; exit 1; }

$(STAMP): pyproject.toml uv.lock | $(UV_DEP)
	@$(UV_RUN) lock --check --offline >/dev/null 2>&1 || $(STALE_LOCK)
	$(UV_RUN) sync --locked --all-extras
	@touch $(STAMP)

install: $(STAMP)

# After changing dependencies in pyproject.toml: re-resolve (other pins stay as they are).
lock: | $(UV_DEP)
	$(UV_RUN) lock

# Fails when pyproject.toml and uv.lock disagree (in `make lint`, so in `make test` and CI).
lock-check: | $(UV_DEP)
	$(UV_RUN) lock --check || $(STALE_LOCK)

dev: $(STAMP)
	$(BIN)/antifragile dev

worker: $(STAMP)
	$(BIN)/antifragile worker

lint: $(STAMP) lock-check
	$(BIN)/ruff format --check $(CODE) tests bench
	$(BIN)/ruff check $(CODE) tests bench
	$(BIN)/mypy $(CODE)
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format $(CODE) tests bench
	$(BIN)/ruff check --fix $(CODE) tests bench

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	$(BIN)/python -m bench

bench-full: $(STAMP)
	$(BIN)/python -m bench --full

demo: $(STAMP)
	$(BIN)/antifragile demo

clean:
	rm -rf $(VENV) $(UV_HOME) .antifragile .pytest_cache .mypy_cache .ruff_cache
