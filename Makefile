# Two commands set everything up on a fresh machine:
#   make demo   creates .venv, installs convlens, trains a small network and writes the HTML report
#   make test   adds the dev extras and runs ruff, mypy and the whole pytest suite
# pip (not uv/poetry) is used on purpose: it finds the torch wheels on this machine's local disk.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --disable-pip-version-check -c constraints.txt
DATA   ?= $(abspath ../shared/data)

.PHONY: demo test lint typecheck pytest bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q --upgrade "pip>=24"

# Stamps make reinstalling cheap: pip runs again only when the project's files change.
$(VENV)/.runtime: $(PY) pyproject.toml constraints.txt
	$(PIP) -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(PIP) -e ".[dev]"
	touch $@

demo: $(VENV)/.runtime
	$(VENV)/bin/convlens demo
	@echo "Explore the demo run in the browser: $(VENV)/bin/convlens serve runs/demo"

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

typecheck: $(VENV)/.dev
	$(VENV)/bin/mypy

pytest: $(VENV)/.dev
	CONVLENS_DATA="$(DATA)" $(PY) -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(VENV)/.dev
	CONVLENS_DATA="$(DATA)" $(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
