# Two commands on a fresh machine: `make demo` and `make test`. Each creates the virtual environment
# (.venv, or VENV=...) the first time, installing the project with every extra and torch 2.13.0.
# TORCH=... picks another torch release; on a machine whose registry serves CUDA builds of torch,
# install a CPU build first (see the README's Install section).

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PINS ?=
# pytest-xdist: one worker per core (the suite is about 3 minutes of CPU). MARKS='not slow' leaves out the
# tests that spawn processes or train models (two thirds of the time).
MARKS ?=
PYTEST ?= -m pytest -q -n auto $(if $(MARKS),-m "$(MARKS)")
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint types pytest portable clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" $(PINS) -e ".[dev]"
	$(BIN)/python -c "import numpy, torch; print('installed: torch', torch.__version__, 'numpy', numpy.__version__)"
	touch $(STAMP)

install: $(STAMP)  ## the development install: the project, every extra and the test tools

demo: $(STAMP)  ## train the demo's three runs and show that evaluating inside fork_rng() changes nothing
	$(BIN)/python -m rng_fork demo

lint: $(STAMP)
	$(BIN)/python -m ruff check rng_fork tests benchmarks

types: $(STAMP)
	$(BIN)/python -m mypy --strict rng_fork

pytest: $(STAMP)  ## the suite, with the raw-memory fast path where it is available
	$(BIN)/python $(PYTEST)

# The slow tests run once, on the fast path: the processes they spawn and the models they train do not
# depend on which path copies the states, and the tests that compare the paths are not slow.
portable: $(STAMP)  ## the suite through the official APIs only, without the slow tests
	RNG_FORK_PORTABLE=1 $(BIN)/python $(PYTEST) -m "not slow"

test: lint types pytest portable  ## everything CI checks on this Python and this torch

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
