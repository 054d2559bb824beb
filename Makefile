# Newcomer entry points: `make quickstart` and `make test` (each sets up .venv first if needed).
PYTHON ?= python3.11
VENV ?= .venv
EXTRAS ?= cpu,dev

.PHONY: setup setup-verl quickstart test test-fast lint format tiny-model clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup_venv.sh
	PYTHON=$(PYTHON) EXTRAS=$(EXTRAS) scripts/setup_venv.sh $(VENV)

# verl's own code, for the tests that run it on our tables: its own environment, since verl pins
# transformers below what the pipeline needs (about a minute to build).
setup-verl: .venv-verl/.installed

.venv-verl/.installed: pyproject.toml scripts/setup_verl_venv.sh
	PYTHON=$(PYTHON) scripts/setup_verl_venv.sh .venv-verl

quickstart: setup
	$(VENV)/bin/expo-data run data/quickstart.yaml --force-new
	$(VENV)/bin/expo-data inspect runs/quickstart --rows 2

test: setup setup-verl
	$(VENV)/bin/python -m pytest

# The inner loop: no flows, servers or trainers, no model loads (well under a minute).
test-fast: setup
	$(VENV)/bin/python -m pytest -m "not slow and not engine"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

tiny-model: setup
	$(VENV)/bin/expo-data tiny-model build

clean:
	rm -rf runs .pytest_cache
