# domainfm: `make demo` runs the main job on bundled sample data; `make test` runs the test suite.
# Both create .venv on first use (pip takes torch from this machine's local wheels when present).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[all,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m domainfm demo pathology
	$(BIN)/python -m domainfm demo core

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --durations=10 tests

# the slow checks and every benchmark (about 2 hours on 2 CPU cores; each script also runs on its own)
bench: $(STAMP) .bench/lightly
	$(BIN)/python -m pytest -q -m slow tests
	$(BIN)/python benchmarks/engine_overhead.py
	$(BIN)/python benchmarks/tiling.py
	PYTHONPATH=.bench/lightly $(BIN)/python benchmarks/ssl_quality.py
	PYTHONPATH=.bench/lightly $(BIN)/python benchmarks/dinov2_step_time.py
	$(BIN)/python benchmarks/label_efficiency.py --backbone .bench/ssl_quality/mae

.bench/lightly: | $(BIN)/python
	$(BIN)/python -m pip install --quiet --target .bench/lightly lightly==1.6.0 --no-deps

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .

clean:
	rm -rf runs outputs multirun .pytest_cache .ruff_cache
