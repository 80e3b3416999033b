# Everyday commands. Each target creates .venv (pip, editable install with dev extras) when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install train test test-all lint format bench tables clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

train: $(STAMP)  ## the embedded mini benchmark (pretrains the base once, then one Piggyback task)
	$(PY) -m src.train $(ARGS)

test: $(STAMP)  ## default suite (slow tests deselected)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) scripts/bench.py $(ARGS)

tables: $(STAMP)
	$(PY) scripts/make_tables.py --readme README.md $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
