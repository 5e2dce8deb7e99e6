"""Memory actually used by a load, measured in a fresh process (VmHWM), not assumed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

MiB = 1 << 20

CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import lazyweights as lw

    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * 4096

    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

    url, budget = sys.argv[1], sys.argv[2]
    with lw.open(url) as ckpt:
        out = {w.key: np.ones(w.shape, w.dtype) for w in ckpt.weights}  # resident before the load
        before = rss()
        open("/proc/self/clear_refs", "w").write("5")
        report = ckpt.load(out=out, max_memory=budget, concurrency=8)
        ok = all(float(out[k][0, 0]) == float(i) for i, k in enumerate(out))
    print(json.dumps({"growth": hwm() - before, "peak_in_flight": report.peak_in_flight, "ok": ok}))
    """
)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    """256 MiB in 16 MiB weights."""
    path = tmp_path_factory.mktemp("mem") / "big.h5"
    with h5py.File(path, "w") as f:
        for i in range(16):
            f[f"w{i:02d}"] = np.full((2048, 2048), i, dtype="f4")
    return path


@pytest.mark.parametrize("budget_mib", [8, 32])
@pytest.mark.parametrize("scheme", ["local", "http"])
def test_rss_growth_stays_within_budget(big_file, http_server, http_root, scheme, budget_mib) -> None:
    import shutil

    shutil.copy(big_file, http_root / "big.h5")
    url = str(big_file) if scheme == "local" else f"{http_server.url}/big.h5"
    out = subprocess.run(
        [sys.executable, "-c", CHILD, url, f"{budget_mib}MiB"], check=True, capture_output=True, text=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ok"]
    assert result["peak_in_flight"] <= budget_mib * MiB
    slack = 48 * MiB  # interpreter, HTTP client buffers, thread stacks
    assert result["growth"] <= budget_mib * MiB + slack, result
