# Two commands on a fresh machine: `make run` (the main job on the embedded defaults) and `make test`.
# Inside an active virtual environment they install into it; otherwise they create `.venv` here and use it.
# The CPU torch wheel on this kind of machine is for Python 3.11: any other Python would pull a CUDA build.
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := .venv
endif
BOOTSTRAP_PYTHON ?= python3.11
PYTHON := $(VENV)/bin/python

.PHONY: install run quick test bench

$(PYTHON):
	$(BOOTSTRAP_PYTHON) -m venv $(VENV)

install: $(PYTHON)
	PYTHON=$(PYTHON) bash .ci/install

run: install
	$(PYTHON) experiments/run.py --constrained

quick: install
	$(PYTHON) experiments/run.py --constrained --quick

test: install
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) experiments/bench_mask.py
