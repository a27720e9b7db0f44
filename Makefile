# `make demo` and `make test` work on a fresh machine: each creates .venv and installs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_MODEL ?= runs/quickstart

.PHONY: install demo train-demo test test-fast lint benchmark clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.installed

# The quickstart sweep: draws the sample data (if absent), starts a local Ray, logs every
# trial to the local MLflow store (mlflow.db), prints the best trial and how to open the UI.
demo: install
	$(BIN)/captioning sweep --experiment experiments/quickstart.yaml

# One training run of the quickstart experiment, scored and used to caption three images.
train-demo: install
	$(BIN)/captioning train --experiment experiments/quickstart.yaml --output $(DEMO_MODEL)
	$(BIN)/captioning evaluate --model $(DEMO_MODEL) --beam 3 --output $(DEMO_MODEL)/test-predictions.json
	$(BIN)/captioning caption --model $(DEMO_MODEL) $$(ls data/sample/Images/*.jpg | head -n 3)

# Two workers: much of a test's time is one process starting (Python, TensorFlow, Ray), so on
# 2 cores a second test fills the idle one. Each file runs on one worker, the files that run
# sweeps handed out first (tests/conftest.py).
TEST_WORKERS ?= 2

test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

# The fast lane, for the edit-test loop: the unit tests not marked slow (no sweep, no whole
# command, no model trained for more than an epoch or two), under 3 min on 2 cores.
test-fast: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not slow" tests/unit

lint: install
	$(BIN)/ruff check .

benchmark: install
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/decode_throughput.py

clean:
	rm -rf $(VENV) runs data/sample ray_results mlflow.db mlartifacts .pytest_cache
