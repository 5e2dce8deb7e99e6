"""The fault table: one HTTP load per storage fault, what came out, in one run.

    python benchmarks/fault_table.py

Runs the scenarios of ``tests/faults.py`` (the rows ``tests/test_faults.py``
asserts) against the tests' fault-injecting Range server on loopback: each
opens a 48-weight HDF5 checkpoint, injects its faults into the GETs of the
load, loads every weight at ``concurrency=4`` and compares with h5py.  Prints
a Markdown table (fault, expected outcome, outcome, GETs, seconds) and the
count of rows whose outcome was not the expected one: silently wrong values
and foreign exceptions must be 0.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import faults  # noqa: E402
from tests.servers import serve  # noqa: E402


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp, serve(tmp) as server:
        outcomes = [faults.run(s, server, Path(tmp)) for s in faults.SCENARIOS]
    print(faults.table(outcomes))
    wrong = sum(o.outcome == "WRONG VALUES" for o in outcomes)
    foreign = sum(o.outcome.startswith("foreign") for o in outcomes)
    unexpected = sum(not o.ok for o in outcomes)
    print(f"\n{len(outcomes)} faults: {wrong} silently wrong, {foreign} foreign exceptions, {unexpected} unexpected")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
