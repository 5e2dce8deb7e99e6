"""A seeded fuzz run as part of the suite: mutated real checkpoints never give a wrong value or a foreign error.

The full run (``make fuzz``, 10,000 inputs) uses the same harness; this one
replays a fixed set of inputs from byte-identical seeds, so a failure here is
a reproducible bug, not noise.
"""

from __future__ import annotations

from collections import Counter

from tests.fuzz.harness import run, table


def test_seeded_fuzz_run_has_no_wrong_values_crashes_or_foreign_errors(monkeypatch) -> None:
    monkeypatch.setenv("LAZYWEIGHTS_HDF5_METADATA", "walk")  # the crash-proof metadata parse; workers inherit it
    results = run(seed=20261124, count=300, workers=2, timeout=30, keras3=False)
    counts = Counter(r.outcome for r in results)
    bad = [r for r in results if r.outcome in ("DIFFERENT", "other", "crash", "hang", "memory")]
    assert not bad, table(results) + "\n" + "\n".join(f"{r.outcome} {r.seed_file} {r.mutation} {r.detail}" for r in bad)
    assert counts["equal"] + counts["LazyWeightsError"] > len(results) // 2  # the harness really judged inputs
    assert {r.fmt for r in results} >= {"zarr mirror", "TensorFlow checkpoint", "tf-keras full model .h5"}
