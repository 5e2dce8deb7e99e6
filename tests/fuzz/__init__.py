"""Fuzzing lazyweights against h5py on mutated real checkpoints (see :mod:`tests.fuzz.harness`)."""
