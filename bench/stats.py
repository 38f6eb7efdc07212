"""What the benchmarks share: percentiles, resident memory, and running client threads to completion.

Why one module: every bench script prints ratios and percentiles measured side by side, and they must be
computed the same way in all of them (linear interpolation between ranks, as numpy's default).
Scripts import it as ``from bench.stats import ...`` (each script puts the repository root on ``sys.path``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linearly interpolated; NaN when empty."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def median(values: list[float]) -> float:
    return pct(values, 0.5)


def rss_mib(pid: int | str = "self") -> float:
    """Resident set size (VmRSS) of a process, MiB; NaN when it cannot be read (the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def run_clients(clients: int, run: Callable[[], None]) -> float:
    """Start ``clients`` threads running ``run``, wait for all; returns the wall time in seconds."""
    started = time.perf_counter()
    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started
