# lazyweights: `make test` and `make demo` work on a fresh machine; both create .venv when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export KERAS_BACKEND := torch

.PHONY: install test demo bench fuzz lint extras-check clean keras-suite

# Keras's own saving tests, from the source distribution of the pinned Keras, run through lazyweights
# (tests/keras_suite): downloaded once into .venv, extracted into the (git-ignored) upstream folder.
KERAS_VERSION := $(shell sed -n 's/^keras==//p' constraints.txt)
KERAS_SDIST   := $(VENV)/sdists/keras-$(KERAS_VERSION).tar.gz
KERAS_SUITE   := tests/keras_suite/upstream
KERAS_TESTS   := keras/src/saving/saving_lib_test.py keras/src/saving/saving_api_test.py \
                 keras/src/legacy/saving/legacy_h5_format_test.py

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU build on this machine's disk; unpinned, pip may pick a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	# constraints.txt pins the versions CI last passed with: reproducible, and no resolver backtracking
	# through the boto3/botocore/aiobotocore pins of moto and s3fs
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

$(KERAS_SDIST): | $(STAMP)
	$(BIN)/pip download --quiet --no-deps --no-binary :all: keras==$(KERAS_VERSION) -d $(VENV)/sdists

$(KERAS_SUITE)/.keras-$(KERAS_VERSION): $(KERAS_SDIST)
	rm -rf $(KERAS_SUITE) && mkdir -p $(KERAS_SUITE)
	for f in $(KERAS_TESTS); do tar -xzOf $< keras-$(KERAS_VERSION)/$$f > $(KERAS_SUITE)/$$(basename $$f); done
	touch $@

keras-suite: $(KERAS_SUITE)/.keras-$(KERAS_VERSION)

test: $(STAMP) keras-suite
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check lazyweights tests benchmarks examples scripts

# each extra alone, in a fresh interpreter with the other extras' modules hidden, exercised once (README "Install")
extras-check: $(STAMP)
	$(BIN)/python scripts/extras_check.py

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# the full fuzz run (10,000 mutated checkpoints against h5py); `make test` runs a seeded 300 of them
fuzz: $(STAMP)
	LAZYWEIGHTS_HDF5_METADATA=walk $(BIN)/python -m tests.fuzz --seed 1 --count 10000

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_load.py

clean:
	rm -rf $(VENV) build .pytest_cache .hypothesis *.egg-info $(KERAS_SUITE)
