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

# The embedded mini benchmark: pretrains the base once, then trains one Piggyback task.
# force=true: train even though the repository ships this run's record (results/runs/).
train: $(STAMP)
	$(PY) -m src.train force=true $(ARGS)

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
