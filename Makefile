# perftune: set-up, the main job, tests and checks. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# On a machine without a GPU, torch 2.13.0 resolves to the CPU wheel (a plain `pip install
# torch` would pull the multi-GB CUDA build). On a GPU machine, install your CUDA torch first.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.perftune-installed

.PHONY: help setup run collect test lint clean

help:
	@echo "make run      set up (.venv) and serve recommendations over HTTP on 127.0.0.1:8000 (store and model built from the shipped data on first run)"
	@echo "make collect  set up (.venv) and run the default collection (GPU, or the Triton interpreter on CPU)"
	@echo "make test   set up (.venv) and run the test suite (CPU; GPU tests skip without a GPU)"
	@echo "make lint   ruff and mypy"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[collect,cluster,dev,baselines]"
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/perftune serve --host $${HOST:-127.0.0.1} --port $${PORT:-8000}

collect: setup
	$(BIN)/perftune collect
	$(BIN)/perftune db stats

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/mypy tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
