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
.PHONY: help install browser demo test lint format sample-runs bench browser-test floors clean

help:
	@echo "make demo          set up, watch examples/mlp_classifier.py, print the report"
	@echo "make test          set up and run the tests"
	@echo "make lint          ruff check + ruff format --check + mypy gradlens/ + lint-imports (floors)"
	@echo "make sample-runs   regenerate sample_runs/ from examples/ with gradlens watch"
	@echo "make bench         run the benchmarks in bench/ (side-by-side ratios)"
	@echo "make browser-test  the dashboard's headless-Chromium tests only"
	@echo "make floors        the report/store/dashboard tests with every dependency at its floor"

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
	@echo "Run recorded in $(RUNS)/demo. Browse it:  $(BIN)/gradlens dashboard $(RUNS)"
	@echo "Read it back in Python:"
	@echo "  $(PY) -c \"import gradlens; print(gradlens.open_run('$(RUNS)/demo').table('layers'))\""

# Debian's Chromium and ChromeDriver for the dashboard's browser tests (skipped without them).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq chromium chromium-driver) || \
		echo "could not install chromium: browser tests will be skipped"

test: install browser
	$(PY) -m pytest -n 2 --dist loadscope $(PYTEST_ARGS)

browser-test: install browser
	$(PY) -m pytest tests/dashboard -m browser --headless -p no:cacheprovider

floors:
	bash .ci/floors

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Small real runs recorded from examples/, committed for the demo, the tests and the dashboard.
SAMPLE = $(BIN)/gradlens watch --runs-dir sample_runs --status off
sample-runs: install
	rm -rf sample_runs/*/
	$(SAMPLE) --name mlp --probes full --probe hessian.every=50 --probe hessian.density_runs=2 \
		--probe landscape.every=150 --probe landscape.steps=11 examples/mlp_classifier.py
	$(SAMPLE) --name mlp-spiky examples/mlp_classifier.py --spike-at 150
	$(SAMPLE) --name mlp-diverged examples/mlp_classifier.py --lr 50 --steps 100
	$(SAMPLE) --name tiny-gpt --probes standard --probe hessian.every=50 \
		--probe hessian.density_runs=2 --probe landscape.at_end=true --probe landscape.steps=11 \
		examples/tiny_gpt.py
	$(SAMPLE) --name grokking --probes standard --probe collapse.every=100 \
		--probe hessian.every=500 examples/grokking.py
	$(SAMPLE) --name grokking-wd --probes standard --probe collapse.every=50 \
		--probe hessian.every=200 examples/grokking.py --weight-decay 1.0 --steps 800

bench: install
	$(PY) bench/overhead.py
	$(PY) bench/hessian.py
	$(PY) bench/collapse.py
	$(PY) bench/landscape.py
	$(PY) bench/dashboard.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
