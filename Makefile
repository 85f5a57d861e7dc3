# Two commands on a fresh machine: `make run` (the main job on the embedded defaults) and `make test`.
PYTHON ?= python

.PHONY: install run quick test bench

install:
	bash .ci/install

run: install
	$(PYTHON) experiments/run.py --constrained

quick: install
	$(PYTHON) experiments/run.py --constrained --quick

test: install
	$(PYTHON) -m pytest -q

bench:
	$(PYTHON) experiments/bench_mask.py
