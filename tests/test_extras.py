"""A missing optional dependency fails with an error that names the extra to install.

Each case runs in a fresh interpreter with the dependency made unimportable
(``sys.modules[name] = None``), so nothing imported by other tests hides it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

CASES = {
    "torch": ("torch", "import lazyweights.torch"),
    "keras": ("keras", "import lazyweights.keras"),
    "distributed": ("distributed", "from lazyweights.tools import distributed\ndistributed.load(H5)"),
    "zarr": ("zarr", "lw.mirror(H5, TMP + '/m.zarr')"),
    "s3": ("s3fs", "lw.open('s3://bucket/model.h5', {'anon': True})"),
    "gcs": ("gcsfs", "lw.open('gs://bucket/model.h5', {'token': 'anon'})"),
}

SNIPPET = """
import json, sys
for name in {hidden!r}:
    sys.modules[name] = None
import lazyweights as lw
H5, TMP = {h5!r}, {tmp!r}
try:
{body}
except BaseException as exc:
    print(json.dumps(dict(type=type(exc).__name__, lw=isinstance(exc, lw.LazyWeightsError),
                          imp=isinstance(exc, ImportError), msg=str(exc))))
else:
    print(json.dumps(None))
"""


@pytest.mark.parametrize("extra", sorted(CASES))
def test_missing_dependency_names_its_extra(extra: str, tmp_path: Path) -> None:
    module, body = CASES[extra]
    h5 = tmp_path / "model.h5"
    with h5py.File(h5, "w") as f:
        f["dense/kernel:0"] = np.ones((2, 3), dtype="<f4")
    hidden = [module] + ([f"{module}.{sub}" for sub in ("distributed", "nn")] if module == "torch" else [])
    code = SNIPPET.format(
        hidden=hidden, h5=str(h5), tmp=str(tmp_path), body="\n".join("    " + line for line in body.splitlines())
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result is not None, f"{body!r} succeeded without {module}"
    assert result["type"] == "MissingDependencyError", result
    assert result["lw"] and result["imp"], result
    assert f"pip install 'lazyweights[{extra}]'" in result["msg"], result
