"""Memory measurement shared by the benchmarks: current RSS and a resettable high-water mark (Linux)."""

from __future__ import annotations

import os


def rss_now() -> int:
    """This process's resident set size, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """This process's RSS high-water mark (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak seen next is the following call's."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def run_json(cmd: list[str]) -> dict:
    """Run a measurement in a fresh process and return the JSON object on its last stdout line."""
    import json
    import subprocess

    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
