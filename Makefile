# Thin wrappers over the CLI and pytest. `make dev` and `make test` are all a new user needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CODE := antifragile workflows activities workers

.PHONY: dev test lint format bench bench-full demo worker clean install

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

dev: $(STAMP)
	$(BIN)/antifragile dev

worker: $(STAMP)
	$(BIN)/antifragile worker

lint: $(STAMP)
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
	rm -rf $(VENV) .antifragile .pytest_cache .mypy_cache .ruff_cache
