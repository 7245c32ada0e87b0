# gradlens — one vocabulary for humans and CI.
#   make demo   set up, record a real example run, print its report, say how to open the dashboard
#   make test   set up and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# Users bring their own torch; when the venv has none we install this CPU build
# (override e.g. TORCH_SPEC="torch==2.5.1" PIP_TORCH_ARGS="--index-url https://download.pytorch.org/whl/cpu").
TORCH_SPEC ?= torch==2.13.0
PIP_TORCH_ARGS ?=
PYTEST_ARGS ?=
RUNS ?= runs

.DEFAULT_GOAL := help
.PHONY: help install demo test lint format sample-runs bench browser-test clean

help:
	@echo "make demo          set up, watch examples/mlp_classifier.py, print the report"
	@echo "make test          set up and run the tests"
	@echo "make lint          ruff check + ruff format --check + mypy gradlens/"
	@echo "make sample-runs   regenerate sample_runs/ from examples/ with gradlens watch"
	@echo "make bench         run the benchmarks in bench/ (side-by-side ratios)"

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(PIP_TORCH_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	rm -rf $(RUNS)/demo
	$(BIN)/gradlens watch --runs-dir $(RUNS) --name demo --status plain \
		examples/mlp_classifier.py --spike-at 150
	$(BIN)/gradlens report $(RUNS)/demo --fail-on error
	@echo
	@echo "Run recorded in $(RUNS)/demo. Read it back in Python:"
	@echo "  $(PY) -c \"import gradlens; print(gradlens.open_run('$(RUNS)/demo').table('layers'))\""

test: install
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Small real runs recorded from examples/, committed for the demo, the tests and the dashboard.
sample-runs: install
	rm -rf sample_runs/mlp sample_runs/mlp-spiky sample_runs/mlp-diverged sample_runs/tiny-gpt
	$(BIN)/gradlens watch --runs-dir sample_runs --name mlp --status off \
		examples/mlp_classifier.py
	$(BIN)/gradlens watch --runs-dir sample_runs --name mlp-spiky --status off \
		examples/mlp_classifier.py --spike-at 150
	$(BIN)/gradlens watch --runs-dir sample_runs --name mlp-diverged --status off \
		examples/mlp_classifier.py --lr 50 --steps 100
	$(BIN)/gradlens watch --runs-dir sample_runs --name tiny-gpt --status off \
		examples/tiny_gpt.py

bench: install
	$(PY) bench/overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
