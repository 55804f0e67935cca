# Two commands do all the set-up on a fresh machine:
#   make train   create .venv if missing, install, run the default job (Scenes benchmark)
#   make test    create .venv if missing, install, run the whole test suite
#   make docs    build the manual (docs/ + mkdocs.yml) into site/, warnings as errors
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: train smoke test lint docs clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-cache-dir --upgrade pip
	$(BIN)/python -m pip install --quiet --no-cache-dir -e '.[dev]'
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/mtl-lightning fit --config configs/default.yaml

smoke: $(STAMP)
	$(BIN)/mtl-lightning fit --config configs/smoke.yaml

test: $(STAMP)
	$(BIN)/ruff check mtl_lightning tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check mtl_lightning tests benchmarks

docs: $(STAMP)
	$(BIN)/mkdocs build --strict

clean:
	rm -rf runs data/scenes site .pytest_cache .ruff_cache
