# The two commands: `make run` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck pytest bench clean image-venv

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "billing needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# make run PORT=8090 serves the API on another port (default PORT from the environment, else 8080).
run: install
	$(BIN)/billing dev $(if $(PORT),--port $(PORT))

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest -q

test: lint typecheck pytest

# The Dockerfile's install steps in a throwaway venv (CI runs this; Docker cannot build here).
image-venv:
	rm -rf .image-venv && $(PYTHON) -m venv .image-venv
	.image-venv/bin/pip install --quiet --no-cache-dir --no-deps --requirement requirements.lock
	.image-venv/bin/pip install --quiet --no-cache-dir --no-deps .
	.image-venv/bin/pip check
	.image-venv/bin/billing --help > /dev/null
	rm -rf .image-venv

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .dev .sim .hypothesis .pytest_cache .mypy_cache .ruff_cache
