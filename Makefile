# The README's commands. Everything installs into .venv from this repository's own files.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export OSSA_DATA_ROOT ?= $(CURDIR)/.ossa_data
# nothing may be fetched from a model hub at run time
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# torch steps share the cores: passive OpenMP waiting avoids spin-wait slowdowns (see cli.py)
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: run test materialize serve ui bench lint clean install

$(BIN)/.installed: pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip check
	touch $@

install: $(BIN)/.installed

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

run: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/ossa run

materialize: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/ossa materialize

serve: install
	$(BIN)/ossa serve

ui: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/ruff check ossa_assets ossa_serving resources sensors tests bench

bench: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python bench/bench_graph.py

clean:
	-$(BIN)/ossa store stop
	rm -rf .dagster_home .ossa_data
