"""Write ``tests/fixtures/mirrors/cnn_weights_v1.zarr``: a mirror in the layout of version 1 (an array per weight).

Run with the lazyweights of commit 31bfac7 (the last to write only version 1
mirrors) on the path, so the fixture is what released code wrote::

    git archive 31bfac7 | tar -x -C /tmp/lw-v1
    PYTHONPATH=/tmp/lw-v1 python scripts/make_v1_mirror_fixture.py

Small chunks, so the arrays hold both layouts version 1 wrote: sharded
(weights of 3+ chunks) and one object per chunk, each chunk with its CRC32C.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import lazyweights as lw

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"

if __name__ == "__main__":
    out = ROOT / "mirrors" / "cnn_weights_v1.zarr"
    shutil.rmtree(out, ignore_errors=True)
    print(lw.mirror(ROOT / "keras2" / "cnn_weights.h5", out, chunk_bytes=256))
