# lazyweights: `make test` and `make demo` work on a fresh machine; both create .venv when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export KERAS_BACKEND := torch

.PHONY: install test demo bench fuzz lint extras-check clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU build on this machine's disk; unpinned, pip may pick a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	# constraints.txt pins the versions CI last passed with: reproducible, and no resolver backtracking
	# through the boto3/botocore/aiobotocore pins of moto and s3fs
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check lazyweights tests benchmarks examples scripts

# each extra alone, in a fresh interpreter with the other extras' modules hidden, exercised once (README "Install")
extras-check: $(STAMP)
	$(BIN)/python scripts/extras_check.py

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# the full fuzz run (10,000 mutated checkpoints against h5py); `make test` runs a seeded 120 of them
fuzz: $(STAMP)
	$(BIN)/python -m tests.fuzz --seed 1 --count 10000

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_load.py

clean:
	rm -rf $(VENV) build .pytest_cache .hypothesis *.egg-info
